package admin_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/store"
)

// A fresh server says, in its log and on its login page, exactly how to make
// the first account; an account handed over by `herald admin create` while
// the server runs (it holds the database) works at the next login.
func TestFirstAccountWhileRunning(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	defer db.Close()
	var logs bytes.Buffer
	h, err := admin.New(admin.Options{DB: db, Config: &cfg, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "herald admin create NAME") || !strings.Contains(l, "go run ./cmd/herald admin create NAME") || !strings.Contains(l, dir) {
		t.Fatalf("start-up log without the hint: %s", l)
	}
	e := &env{t: t, cfg: &cfg, db: db, h: h, srv: newServer(t, h)}
	c := e.client()
	res, body := c.get("/admin/login")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, `id="no-admin"`) || !strings.Contains(body, "herald admin create NAME") {
		t.Fatalf("login page without the hint: %d", res.StatusCode)
	}

	// The running server holds the lock: create hands the account over.
	if _, err := store.Open(dir, 50*time.Millisecond); err == nil {
		t.Fatal("a second opener got the database")
	}
	if err := admin.HandOver(dir, "ops", "short", false); err == nil {
		t.Fatal("short password handed over")
	}
	if err := admin.HandOver(dir, "ops", testPassword, false); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(admin.HandoverDir(dir), "ops.json"))
	if err != nil || bytes.Contains(raw, []byte(testPassword)) || !bytes.Contains(raw, []byte("$argon2id$")) {
		t.Fatalf("handed-over file %q %v", raw, err)
	}
	if fi, _ := os.Stat(admin.HandoverDir(dir)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("hand-over dir mode %v", fi.Mode())
	}
	// The next login page imports it and no longer shows the hint.
	c = e.client()
	if _, body := c.get("/admin/login"); strings.Contains(body, `id="no-admin"`) {
		t.Fatal("hint still shown with an account")
	}
	if res := c.login("ops", testPassword); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("login with the handed-over account: %d", res.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(admin.HandoverDir(dir), "ops.json")); !os.IsNotExist(err) {
		t.Fatalf("hand-over file kept: %v", err)
	}
	// A second create without --replace does not change the password; with it, it does.
	if err := admin.HandOver(dir, "ops", "another long password", false); err != nil {
		t.Fatal(err)
	}
	if res := e.client().login("ops", "another long password"); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("password replaced without --replace: %d", res.StatusCode)
	}
	if err := admin.HandOver(dir, "ops", "another long password", true); err != nil {
		t.Fatal(err)
	}
	if res := e.client().login("ops", "another long password"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("replaced password: %d", res.StatusCode)
	}
	// The import is in the audit log.
	es, _ := h.Audit(100, 0)
	found := false
	for _, a := range es {
		found = found || (a.Action == "account.create" && a.Target == "account ops" && a.OK)
	}
	if !found {
		t.Fatalf("import not audited: %+v", es)
	}
	// With an account, a restart logs no hint.
	logs.Reset()
	if _, err := admin.New(admin.Options{DB: db, Config: &cfg, Log: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "no admin account") {
		t.Fatalf("hint logged with an account: %s", logs.String())
	}
}

func newServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
