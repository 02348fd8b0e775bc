package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func storageHandler(t *testing.T, db *store.DB, now *time.Time) *Handler {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Admin.AuditMaxEntries = 1000
	h, err := New(Options{DB: db, Config: &cfg, Now: func() time.Time { return *now }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// login starts a session on h and returns its cookie.
func login(t *testing.T, h *Handler, user string) *http.Cookie {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := h.startSession(h.e.NewContext(httptest.NewRequest(http.MethodPost, Prefix+"/login", nil), rec), user); err != nil {
		t.Fatal(err)
	}
	cs := rec.Result().Cookies()
	if len(cs) != 1 {
		t.Fatalf("cookies %v", cs)
	}
	return cs[0]
}

func sessionOf(h *Handler, ck *http.Cookie) (string, bool) {
	req := httptest.NewRequest(http.MethodGet, Prefix+"/", nil)
	req.AddCookie(ck)
	_, user, ok := h.sessionFrom(h.e.NewContext(req, httptest.NewRecorder()))
	return user, ok
}

func auditCount(t *testing.T, db *store.DB) int {
	t.Helper()
	var n int
	if err := db.View(func(tx *store.Tx) error {
		var err error
		n, err = storeFor(db).countAudit(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// Accounts, sessions and the audit log behave the same on both backends.
func TestAdminStorage(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		now := time.Unix(1_800_000_000, 0)
		h := storageHandler(t, db, &now)
		if h.hasAccount() {
			t.Fatal("an empty database has an account")
		}
		for _, u := range []string{"zoe", "adam", "Bob"} {
			if err := putUser(db, u, "hash-"+u, false, now); err != nil {
				t.Fatal(err)
			}
		}
		if err := putUser(db, "adam", "other", false, now); err != ErrUserExists {
			t.Errorf("a second adam: %v", err)
		}
		if err := putUser(db, "adam", "hash-adam2", true, now); err != nil {
			t.Fatal(err)
		}
		us, err := Users(db)
		if err != nil || len(us) != 3 || us[0].Username != "Bob" || us[1].Username != "adam" || us[2].Username != "zoe" || us[0].PasswordHash != "" {
			t.Fatalf("Users = %+v, %v", us, err)
		}
		if hash, ok := storedHash(db, "adam"); !ok || hash != "hash-adam2" {
			t.Errorf("storedHash = %q, %v", hash, ok)
		}
		if !h.hasAccount() {
			t.Error("hasAccount false with accounts")
		}
		ck := login(t, h, "zoe")
		if user, ok := sessionOf(h, ck); !ok || user != "zoe" {
			t.Fatalf("session = %q, %v", user, ok)
		}
		now = now.Add(h.lifetime + time.Second)
		if _, ok := sessionOf(h, ck); ok {
			t.Error("an expired session is valid")
		}
		ck2 := login(t, h, "zoe") // and forgets the expired one
		if err := db.View(func(tx *store.Tx) error {
			ss, err := storeFor(db).sessions(tx)
			if len(ss) != 1 {
				t.Errorf("%d sessions stored, want 1 (the expired one forgotten)", len(ss))
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := DeleteUser(db, "zoe"); err != nil {
			t.Fatal(err)
		}
		if _, ok := sessionOf(h, ck2); ok {
			t.Error("a deleted account's session is valid")
		}
		if err := DeleteUser(db, "zoe"); err == nil {
			t.Error("deleting a missing account succeeded")
		}

		// The audit log: newest first, bounded to the newest 1000, and the
		// retention applies on the next write and on PruneAudit.
		for i := range 1500 {
			now = now.Add(time.Second)
			h.audit("root", "revoke", "inv"+strconv.Itoa(i), "", true)
		}
		if n := auditCount(t, db); n != 1000 {
			t.Fatalf("%d entries stored, want the bound 1000", n)
		}
		es, err := h.Audit(2, 0)
		if err != nil || len(es) != 2 || es[0].Target != "inv1499" || es[1].Target != "inv1498" {
			t.Fatalf("newest entries = %+v, %v", es, err)
		}
		if es, _ = h.Audit(1000, 999); len(es) != 1 || es[0].Target != "inv500" {
			t.Fatalf("oldest kept: %+v, want inv500", es)
		}
		now = now.Add(90*24*time.Hour + time.Second)
		if err := h.PruneAudit(); err != nil {
			t.Fatal(err)
		}
		if n := auditCount(t, db); n != 0 {
			t.Fatalf("%d entries older than admin.audit_retention", n)
		}
		h.audit("root", "login", "", "", true)
		if n := auditCount(t, db); n != 1 {
			t.Fatalf("%d entries after one write, want 1", n)
		}
	})
}

// A session started on one replica is valid on another (two pools on one
// database): they share the signing key and the session rows. Logging out
// on either ends it on both.
func TestAdminSessionAcrossReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	a, b := storetest.OpenPostgres(t, dsn), storetest.OpenPostgres(t, dsn)
	now := time.Now()
	ha, hb := storageHandler(t, a, &now), storageHandler(t, b, &now)
	if !reflect.DeepEqual(ha.key, hb.key) {
		t.Fatal("the replicas sign sessions with different keys")
	}
	if err := putUser(a, "root", "hash", false, now); err != nil {
		t.Fatal(err)
	}
	ck := login(t, ha, "root")
	if user, ok := sessionOf(hb, ck); !ok || user != "root" {
		t.Fatalf("replica b: session = %q, %v", user, ok)
	}
	sid, _, _ := hb.sessionFrom(func() echo.Context {
		req := httptest.NewRequest(http.MethodGet, Prefix+"/", nil)
		req.AddCookie(ck)
		return hb.e.NewContext(req, httptest.NewRecorder())
	}())
	hb.endSession(hb.e.NewContext(httptest.NewRequest(http.MethodPost, Prefix+"/logout", nil), httptest.NewRecorder()), sid)
	if _, ok := sessionOf(ha, ck); ok {
		t.Error("a session ended on replica b is valid on replica a")
	}
	// The audit log is one log: entries from both replicas, counted once.
	ha.audit("root", "a", "", "", true)
	hb.audit("root", "b", "", "", true)
	if es, _ := ha.Audit(10, 0); len(es) != 2 || es[0].Action != "b" {
		t.Errorf("audit on replica a = %+v", es)
	}
	if n := auditCount(t, a); n != 2 {
		t.Errorf("audit count %d, want 2", n)
	}
}

// The console's records copy from bbolt to PostgreSQL with equal sums, and
// the copy serves: a session from before the move is still valid.
func TestCopyStorage(t *testing.T) {
	ctx := context.Background()
	src := storetest.Open(t, store.BackendBolt)
	dst := storetest.Open(t, store.BackendPostgres)
	now := time.Now()
	h := storageHandler(t, src, &now)
	for i := range 5 {
		if err := putUser(src, "user"+strconv.Itoa(i), "hash", false, now.Add(time.Duration(i)*time.Nanosecond)); err != nil {
			t.Fatal(err)
		}
	}
	ck := login(t, h, "user3")
	for i := range 1200 {
		now = now.Add(time.Millisecond + 7*time.Nanosecond)
		h.audit("user1", "revoke", "inv"+strconv.Itoa(i), "detail", i%2 == 0)
	}
	var copied int
	if err := CopyStorage(ctx, src, dst, func(n int) { copied += n }); err != nil {
		t.Fatal(err)
	}
	if copied != 1+5+1+1000 {
		t.Errorf("progress counted %d records", copied)
	}
	s1, err := SumStorage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := SumStorage(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s1, s2) {
		t.Errorf("sums differ:\n%+v\n%+v", s1, s2)
	}
	hp := storageHandler(t, dst, &now)
	if user, ok := sessionOf(hp, ck); !ok || user != "user3" {
		t.Errorf("a session from before the copy: %q, %v", user, ok)
	}
	if es, _ := hp.Audit(1, 0); len(es) != 1 || es[0].Target != "inv1199" {
		t.Errorf("newest audit entry on the copy: %+v", es)
	}
}

// The console's queries use indexes on populated tables.
func TestAdminQueriesUseIndexes(t *testing.T) {
	db := storetest.Open(t, store.BackendPostgres)
	ctx := context.Background()
	pool := db.PG().Pool()
	if _, err := pool.Exec(ctx, `INSERT INTO admin_audit (at, who, action, ok) SELECT now() - g * interval '1 minute', 'root', 'login', true FROM generate_series(1, 20000) g;
		INSERT INTO admin_sessions (id, username, created, expires) SELECT 's' || g, 'user' || (g % 500), now(), now() + g * interval '1 minute' FROM generate_series(1, 5000) g;
		ANALYZE`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`SELECT username, created, expires FROM admin_sessions WHERE id = $1`, []any{"s7"}},
		{`DELETE FROM admin_sessions WHERE expires < $1`, []any{time.Now().Add(-time.Hour)}},
		{`DELETE FROM admin_sessions WHERE username = $1`, []any{"user7"}},
		{`SELECT at FROM admin_audit ORDER BY id DESC LIMIT $1 OFFSET $2`, []any{50, 100}},
		{`DELETE FROM admin_audit WHERE at < $1`, []any{time.Now().Add(-90 * 24 * time.Hour)}},
		{`DELETE FROM admin_audit WHERE id IN (SELECT id FROM admin_audit ORDER BY id LIMIT $1)`, []any{1}},
	} {
		rows, err := pool.Query(ctx, "EXPLAIN "+q.sql, q.args...)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if p := strings.Join(plan, "\n"); strings.Contains(p, "Seq Scan") {
			t.Errorf("%s\nscans a whole table:\n%s", q.sql, p)
		}
	}
}
