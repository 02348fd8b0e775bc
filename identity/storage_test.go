package identity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// The identity storage conformance suite: each test is written once, as a
// function of a *store.DB, and runs on a bbolt file and on a PostgreSQL
// database (storetest.Run); the cross-replica ones run two pools on one
// PostgreSQL database.

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testClock is an injected clock tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newClock() *testClock {
	return &testClock{now: time.Date(2026, 11, 29, 12, 0, 0, 123456789, time.UTC)}
}

var testTerms = config.Terms{Policies: map[string]config.Policy{
	"privacy": {Version: "2", Languages: map[string]config.PolicyLanguage{"en": {Name: "Privacy", URL: "https://example.org/privacy-2"}}},
}}

func newTestService(t testing.TB, db *store.DB, clock *testClock, idle time.Duration) *Service {
	t.Helper()
	s, err := New(db, Options{Now: clock.Now, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Terms: testTerms, TokenIdleLifetime: idle, Lookup: config.Lookup{PepperRotation: config.Duration(24 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnableValidation(ValidationOptions{SessionLifetime: time.Hour, BaseURL: "https://id.example.org"}); err != nil {
		t.Fatal(err)
	}
	return s
}

func bind(t testing.TB, s *Service, address, mxid string) {
	t.Helper()
	if err := s.DB().Update(func(tx *store.Tx) error {
		return s.PutBinding(tx, Binding{Medium: "email", Address: address, MXID: mxid})
	}); err != nil {
		t.Fatalf("bind %s: %v", address, err)
	}
}

func unbind(t testing.TB, s *Service, address string) {
	t.Helper()
	if err := s.DB().Update(func(tx *store.Tx) error { return s.DeleteBinding(tx, "email", address) }); err != nil {
		t.Fatalf("unbind %s: %v", address, err)
	}
}

func lookupOne(t testing.TB, s *Service, address string) string {
	t.Helper()
	pepper, _, err := s.Pepper()
	if err != nil {
		t.Fatal(err)
	}
	h := LookupHash(address, "email", pepper)
	got, err := s.LookupHashed("sha256", pepper, []string{h})
	if err != nil {
		t.Fatalf("lookup %s: %v", address, err)
	}
	return got[h]
}

func TestStorageAccounts(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clock := newClock()
		s := newTestService(t, db, clock, 10*time.Hour)
		tok, err := s.CreateAccount("@alice:example.org")
		if err != nil {
			t.Fatal(err)
		}
		a, err := s.AccountByToken(tok)
		if err != nil || a.UserID != "@alice:example.org" || a.Server() != "example.org" {
			t.Fatalf("AccountByToken = %+v, %v", a, err)
		}
		if _, err := s.AccountByToken("nope"); !errors.Is(err, ErrUnknownToken) {
			t.Fatalf("unknown token: %v", err)
		}
		// A use an hour (touchEvery) after the last one is recorded
		// (through DB.Commit), so the token stays alive past the lifetime
		// counted from its creation.
		clock.Add(9 * time.Hour)
		if err := s.useToken(tok, clock.Now().UTC()); err != nil {
			t.Fatal(err)
		}
		clock.Add(9 * time.Hour)
		if _, err := s.AccountByToken(tok); err != nil {
			t.Fatalf("token used 9h ago: %v", err)
		}
		if exp, del, err := s.ExpireIdleTokens(clock.Now()); err != nil || exp != 0 || del != 0 {
			t.Fatalf("sweep of a live token: %d %d %v", exp, del, err)
		}
		// Unused past the lifetime: the sweep makes a tombstone, which says
		// expired, then deletes it one more lifetime later.
		clock.Add(2 * time.Hour)
		if exp, del, err := s.ExpireIdleTokens(clock.Now()); err != nil || exp != 1 || del != 0 {
			t.Fatalf("sweep of an idle token: expired %d deleted %d %v", exp, del, err)
		}
		if _, err := s.AccountByToken(tok); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("expired token: %v", err)
		}
		clock.Add(11 * time.Hour)
		if exp, del, err := s.ExpireIdleTokens(clock.Now()); err != nil || exp != 0 || del != 1 {
			t.Fatalf("sweep of a tombstone: expired %d deleted %d %v", exp, del, err)
		}
		if _, err := s.AccountByToken(tok); !errors.Is(err, ErrUnknownToken) {
			t.Fatalf("deleted tombstone: %v", err)
		}
		// Logout.
		tok2, _ := s.CreateAccount("@bob:example.org")
		if err := s.DeleteToken(tok2); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AccountByToken(tok2); !errors.Is(err, ErrUnknownToken) {
			t.Fatalf("logged out: %v", err)
		}
		// Terms add up.
		if ok, err := s.HasAcceptedTerms("@bob:example.org"); err != nil || ok {
			t.Fatalf("terms before accepting: %v %v", ok, err)
		}
		if err := s.AcceptTerms("@bob:example.org", []string{"https://example.org/other", "https://example.org/privacy-2"}); err != nil {
			t.Fatal(err)
		}
		if err := s.AcceptTerms("@bob:example.org", []string{"https://example.org/privacy-2"}); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.HasAcceptedTerms("@bob:example.org"); err != nil || !ok {
			t.Fatalf("terms after accepting: %v %v", ok, err)
		}
		tok3, _ := s.CreateAccount("@bob:example.org")
		if _, accepted, _, err := s.accountAndTerms(tok3, true); err != nil || !accepted {
			t.Fatalf("accountAndTerms: %v %v", accepted, err)
		}
	})
}

func TestStorageBindings(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		s := newTestService(t, db, newClock(), 0)
		// The hook runs inside the bind's transaction: it sees the binding,
		// and its error undoes it.
		var seen atomic.Int32
		s.OnBind(func(tx *store.Tx, b Binding) error {
			got, err := s.BindingTx(tx, b.Medium, b.Address)
			if err != nil || got == nil || got.MXID != b.MXID {
				return fmt.Errorf("hook does not see the binding: %v %v", got, err)
			}
			seen.Add(1)
			if b.MXID == "@refused:example.org" {
				return errors.New("refused")
			}
			return nil
		})
		bind(t, s, "Alice@Example.ORG", "@alice:example.org")
		bind(t, s, "bob@example.org", "@bob:example.org")
		if err := db.Update(func(tx *store.Tx) error {
			return s.PutBinding(tx, Binding{Medium: "email", Address: "carol@example.org", MXID: "@refused:example.org"})
		}); err == nil || err.Error() != "refused" {
			t.Fatalf("hook error: %v", err)
		}
		if seen.Load() < 3 {
			t.Fatalf("hook ran %d times", seen.Load())
		}
		if b, err := s.BindingFor("email", "carol@example.org"); err != nil || b != nil {
			t.Fatalf("binding of a refused bind: %+v %v", b, err)
		}
		b, err := s.BindingFor("email", "alice@example.org")
		if err != nil || b == nil || b.MXID != "@alice:example.org" || b.Address != "alice@example.org" || b.TS.IsZero() {
			t.Fatalf("BindingFor = %+v, %v", b, err)
		}
		if n, err := s.BindingCount(); err != nil || n != 2 {
			t.Fatalf("BindingCount = %d, %v", n, err)
		}
		// Rebinding an address replaces it and counts once.
		bind(t, s, "bob@example.org", "@bob2:example.org")
		if n, _ := s.BindingCount(); n != 2 {
			t.Fatalf("BindingCount after a rebind = %d", n)
		}
		if got := lookupOne(t, s, "bob@example.org"); got != "@bob2:example.org" {
			t.Fatalf("lookup after a rebind = %q", got)
		}
		// sha256: every distinct bound address once, duplicates and junk
		// ignored; none: the plain addresses.
		pepper, _, _ := s.Pepper()
		ha, hb := LookupHash("alice@example.org", "email", pepper), LookupHash("bob@example.org", "email", pepper)
		got, err := s.LookupHashed("sha256", pepper, []string{ha, ha, "junk", hb, LookupHash("x@example.org", "email", pepper)})
		if err != nil || len(got) != 2 || got[ha] != "@alice:example.org" || got[hb] != "@bob2:example.org" {
			t.Fatalf("sha256 lookup = %v, %v", got, err)
		}
		got, err = s.LookupHashed("none", pepper, []string{"alice@example.org email", "ALICE@example.org email", "x@example.org email", "bad"})
		if err != nil || len(got) != 2 || got["ALICE@example.org email"] != "@alice:example.org" {
			t.Fatalf("none lookup = %v, %v", got, err)
		}
		_, err = s.LookupHashed("sha256", "stale", []string{ha})
		if me, ok := matrix.AsError(err); !ok || me.Code != "M_INVALID_PEPPER" {
			t.Fatalf("wrong pepper: %v", err)
		}
		// Unbinding.
		unbind(t, s, "alice@example.org")
		if got := lookupOne(t, s, "alice@example.org"); got != "" {
			t.Fatalf("lookup after unbind = %q", got)
		}
		if n, _ := s.BindingCount(); n != 1 {
			t.Fatalf("BindingCount after unbind = %d", n)
		}
		unbind(t, s, "alice@example.org") // unbinding twice changes nothing
		if n, _ := s.BindingCount(); n != 1 {
			t.Fatalf("BindingCount after a second unbind = %d", n)
		}
		var all []string
		if err := s.Bindings(func(b Binding) bool { all = append(all, b.Address); return true }); err != nil || len(all) != 1 || all[0] != "bob@example.org" {
			t.Fatalf("Bindings = %v, %v", all, err)
		}
		if err := NewConsole(s).Unbind(context.Background(), "alice@example.org"); !errors.Is(err, ErrNotBound) {
			t.Fatalf("console unbind of an unbound address: %v", err)
		}
	})
}

func TestStoragePepperRotation(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clock := newClock()
		s := newTestService(t, db, clock, 0)
		bind(t, s, "alice@example.org", "@alice:example.org")
		old, _, _ := s.Pepper()
		if rotated, err := s.RotatePepperIfDue(); err != nil || rotated {
			t.Fatalf("rotation of a fresh pepper: %v %v", rotated, err)
		}
		clock.Add(25 * time.Hour)
		if err := s.RotatePepperPeriodic(context.Background()); err != nil {
			t.Fatal(err)
		}
		cur, created, _ := s.Pepper()
		if cur == old || !created.Equal(clock.Now().UTC()) {
			t.Fatalf("pepper after a due rotation: %q (%v), was %q", cur, created, old)
		}
		_, err := s.LookupHashed("sha256", old, []string{LookupHash("alice@example.org", "email", old)})
		if me, ok := matrix.AsError(err); !ok || me.Code != "M_INVALID_PEPPER" {
			t.Fatalf("old pepper: %v", err)
		}
		if got := lookupOne(t, s, "alice@example.org"); got != "@alice:example.org" {
			t.Fatalf("lookup with the new pepper = %q", got)
		}
		if err := s.SetPepper("matrixrocks"); err != nil {
			t.Fatal(err)
		}
		if got := lookupOne(t, s, "alice@example.org"); got != "@alice:example.org" {
			t.Fatalf("lookup with a set pepper = %q", got)
		}
	})
}

func TestStorageSessions(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clock := newClock()
		s := newTestService(t, db, clock, 0)
		put := func(sid, address, token string, updated time.Time) {
			t.Helper()
			se := &Session{SID: sid, SecretHash: sha("secret"), Medium: "email", Address: address, SendAttempt: 1,
				TokenHashes: [][]byte{sha(token)}, Created: updated, Updated: updated, MailID: 7}
			if err := db.Update(func(tx *store.Tx) error {
				if err := s.st.putSession(tx, se); err != nil {
					return err
				}
				return s.st.putSessionKey(tx, sha("secret", "email", address), sid)
			}); err != nil {
				t.Fatal(err)
			}
		}
		now := clock.Now().UTC()
		put("s1", "alice@example.org", "tok1", now)
		put("s2", "bob@example.org", "tok2", now.Add(-3*time.Hour))
		put("s3", "alice@example.org", "tok3", now)
		if _, err := s.ValidatedSession("s1", "secret"); !errors.Is(err, errNotValidated) {
			t.Fatalf("before submitToken: %v", err)
		}
		if _, err := s.submitToken("s1", "secret", "wrong"); !errors.Is(err, errBadToken) {
			t.Fatalf("wrong token: %v", err)
		}
		if _, err := s.submitToken("s1", "other", "tok1"); !errors.Is(err, errNoSession) {
			t.Fatalf("wrong secret: %v", err)
		}
		if _, err := s.submitToken("s1", "secret", "tok1"); err != nil {
			t.Fatal(err)
		}
		se, err := s.ValidatedSession("s1", "secret")
		if err != nil || se.Address != "alice@example.org" || se.Validated.IsZero() || se.MailID != 7 {
			t.Fatalf("ValidatedSession = %+v, %v", se, err)
		}
		if _, err := s.submitToken("s2", "secret", "tok2"); !errors.Is(err, errExpired) {
			t.Fatalf("expired session: %v", err)
		}
		// The sweep deletes sessions expired over a lifetime ago, with their keys.
		if n, err := s.DeleteExpiredSessions(clock.Now()); err != nil || n != 1 {
			t.Fatalf("sweep deleted %d, %v", n, err)
		}
		_ = db.View(func(tx *store.Tx) error {
			if se, _ := s.st.session(tx, "s2"); se != nil {
				t.Error("swept session still there")
			}
			if sid, _ := s.st.sessionKey(tx, sha("secret", "email", "bob@example.org")); sid != "" {
				t.Error("swept session's key still there")
			}
			return nil
		})
		if err := s.SweepSessions(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n, err := NewConsole(s).EraseSessions(context.Background(), "Alice@example.org"); err != nil || n != 2 {
			t.Fatalf("EraseSessions = %d, %v", n, err)
		}
		if _, err := s.ValidatedSession("s1", "secret"); !errors.Is(err, errNoSession) {
			t.Fatalf("erased session: %v", err)
		}
	})
}

func TestStorageImport(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		s := newTestService(t, db, newClock(), 0)
		if err := db.View(func(tx *store.Tx) error {
			if s.HasData(tx) {
				t.Error("HasData on an empty database")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		ts := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		err := db.Update(func(tx *store.Tx) error {
			if o, err := s.ImportPepper(tx, "oldpepper"); err != nil || o != Imported {
				return fmt.Errorf("ImportPepper = %v, %v", o, err)
			}
			bi, err := s.ImportBindings(tx)
			if err != nil {
				return err
			}
			for i := range 50 {
				if o, err := bi.Add(Binding{Medium: "email", Address: fmt.Sprintf("u%02d@example.org", i), MXID: fmt.Sprintf("@u%02d:example.org", i), TS: ts}); err != nil || o != Imported {
					return fmt.Errorf("Add = %v, %v", o, err)
				}
			}
			if o, _ := bi.Add(Binding{Medium: "email", Address: "u01@example.org", MXID: "@u01:example.org", TS: ts}); o != Unchanged {
				return fmt.Errorf("same binding again: %v", o)
			}
			if o, _ := bi.Add(Binding{Medium: "email", Address: "u01@example.org", MXID: "@other:example.org", TS: ts}); o != Conflict {
				return fmt.Errorf("other binding: %v", o)
			}
			if err := bi.Close(); err != nil {
				return err
			}
			out, err := s.ImportAccounts(tx, []ImportedAccount{{Token: "t1", UserID: "@u01:example.org", Created: ts}})
			if err != nil || out[0] != Imported {
				return fmt.Errorf("ImportAccounts = %v, %v", out, err)
			}
			if o, err := s.ImportAcceptedTerms(tx, "@u01:example.org", []string{"https://example.org/privacy-2"}); err != nil || o != Imported {
				return fmt.Errorf("ImportAcceptedTerms = %v, %v", o, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if p, _, _ := s.Pepper(); p != "oldpepper" {
			t.Fatalf("pepper after import = %q", p)
		}
		if got := lookupOne(t, s, "u07@example.org"); got != "@u07:example.org" {
			t.Fatalf("lookup of an imported binding = %q", got)
		}
		if n, _ := s.BindingCount(); n != 50 {
			t.Fatalf("BindingCount after import = %d", n)
		}
		if a, err := s.AccountByToken("t1"); err != nil || a.UserID != "@u01:example.org" {
			t.Fatalf("imported token: %+v %v", a, err)
		}
		if ok, _ := s.HasAcceptedTerms("@u01:example.org"); !ok {
			t.Fatal("imported terms not accepted")
		}
		_ = db.View(func(tx *store.Tx) error {
			if !s.HasData(tx) {
				t.Error("HasData after an import")
			}
			return nil
		})
	})
}

// Two replicas on one PostgreSQL database: a bind answered on A is found by
// a lookup on B at once, an unbind answered on A is never answered by B, a
// pepper rotation on A reaches B through NOTIFY.
func TestStorageTwoReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	dbA, dbB := storetest.OpenPostgres(t, dsn), storetest.OpenPostgres(t, dsn)
	clock := newClock()
	a, b := newTestService(t, dbA, clock, 0), newTestService(t, dbB, clock, 0)
	pepper, _, err := a.Pepper()
	if err != nil {
		t.Fatal(err)
	}
	if p, _, _ := b.Pepper(); p != pepper {
		t.Fatalf("replicas disagree on the pepper: %q %q", p, pepper)
	}
	for i := range 50 {
		addr := fmt.Sprintf("r%d@example.org", i)
		bind(t, a, addr, "@r:example.org")
		if got := lookupOne(t, b, addr); got != "@r:example.org" {
			t.Fatalf("bind %d on A: lookup on B = %q", i, got)
		}
		unbind(t, a, addr)
		if got := lookupOne(t, b, addr); got != "" {
			t.Fatalf("unbind %d on A: lookup on B = %q", i, got)
		}
	}
	// Changes B has not applied, then pruned from the log: B's copy finds
	// the gap and is built again, still answering right.
	bind(t, a, "pruned@example.org", "@p:example.org")
	unbind(t, a, "r0@example.org")
	if _, err := dbA.PG().Pool().Exec(context.Background(), `DELETE FROM identity_lookup_changes`); err != nil {
		t.Fatal(err)
	}
	if got := lookupOne(t, b, "pruned@example.org"); got != "@p:example.org" {
		t.Fatalf("lookup on B after a pruned log = %q", got)
	}
	bind(t, a, "after@example.org", "@after:example.org")
	if got := lookupOne(t, b, "after@example.org"); got != "@after:example.org" {
		t.Fatalf("lookup on B after its copy was built again = %q", got)
	}
	if !b.st.(*pgStorage).cache.idx.built {
		t.Fatal("B's in-memory copy is not built")
	}
	unbind(t, a, "pruned@example.org")
	unbind(t, a, "after@example.org")

	// Concurrent binds on both replicas all count.
	var wg sync.WaitGroup
	for r, s := range []*Service{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if err := s.DB().Update(func(tx *store.Tx) error {
					return s.PutBinding(tx, Binding{Medium: "email", Address: fmt.Sprintf("c%d-%d@example.org", r, i), MXID: "@c:example.org"})
				}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n, err := b.BindingCount(); err != nil || n != 40 {
		t.Fatalf("count after concurrent binds = %d, %v", n, err)
	}

	// A rotation on A: B's lookups use the new pepper at once (they compare
	// with the database's), B's hash_details after the notification.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := dbB.PG().Subscribe(ctx, PepperChannel, time.Hour)
	<-signals // the listening connection is up
	if err := a.RotatePepper(); err != nil {
		t.Fatal(err)
	}
	fresh, _, _ := a.Pepper()
	if _, err := b.LookupHashed("sha256", fresh, []string{LookupHash("c0-1@example.org", "email", fresh)}); err != nil {
		t.Fatalf("lookup on B with A's new pepper: %v", err)
	}
	deadline := time.After(10 * time.Second)
	for {
		if p, _, _ := b.Pepper(); p == fresh {
			break
		}
		select {
		case <-signals:
			if err := b.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("B never heard of A's pepper rotation")
		}
	}
	// Racing due rotations rotate once.
	clock.Add(25 * time.Hour)
	var rotations atomic.Int32
	for _, s := range []*Service{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rotated, err := s.RotatePepperIfDue()
			if err != nil {
				t.Error(err)
			}
			if rotated {
				rotations.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := rotations.Load(); n != 1 {
		t.Fatalf("two replicas rotated %d times", n)
	}
}

// WarmLookups builds the process's in-memory copy of the hash index before
// any lookup, on both backends, and lookups then answer from it.
func TestWarmLookupsBuildsTheIndex(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		s := newTestService(t, db, newClock(), 0)
		bind(t, s, "warm@example.org", "@warm:example.org")
		index := func() *lookupIndex {
			switch st := s.st.(type) {
			case *boltStorage:
				return &st.index
			case *pgStorage:
				return &st.cache.idx
			}
			t.Fatalf("storage %T", s.st)
			return nil
		}()
		built := func() bool { index.mu.RLock(); defer index.mu.RUnlock(); return index.built }
		if built() {
			t.Fatal("index built before any lookup or warm-up")
		}
		if err := s.WarmLookups(t.Context()); err != nil {
			t.Fatal(err)
		}
		if !built() {
			t.Fatal("WarmLookups did not build the index")
		}
		pepper, _, err := s.Pepper()
		if err != nil {
			t.Fatal(err)
		}
		h := lookupHashRaw("warm@example.org", "email", pepper)
		var got string
		if _, err := s.st.lookup(db, pepper, [][32]byte{h}, func(_ int, mxid []byte) { got = string(mxid) }); err != nil || got != "@warm:example.org" {
			t.Fatalf("lookup after warm-up: %q %v", got, err)
		}
	})
}
