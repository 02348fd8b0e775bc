package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

func runAdmin(t *testing.T, dataDir, stdin string, args ...string) (string, error) {
	t.Helper()
	return runAdminWith(t, defaultRunOptions(), dataDir, stdin, args...)
}

// runAdminWith runs `herald admin args...` with o, reading stdin.
func runAdminWith(t *testing.T, o runOptions, dataDir, stdin string, args ...string) (string, error) {
	t.Helper()
	o.stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	err := runWith(context.Background(), o, append([]string{"admin"}, args...), []string{"HERALD_DATA_DIR=" + dataDir}, &out, io.Discard)
	return out.String(), err
}

func TestAdminCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, err := runAdmin(t, dir, "", "hash-password")
	if err == nil {
		t.Fatal("empty password accepted")
	}
	out, err = runAdmin(t, dir, "a good long password\n", "hash-password")
	if err != nil || !admin.VerifyPassword(strings.TrimSpace(out), "a good long password") {
		t.Fatalf("hash-password: %q %v", out, err)
	}
	if _, err := runAdmin(t, dir, "short\n", "create", "ops"); err == nil {
		t.Fatal("short password accepted")
	}
	if out, err = runAdmin(t, dir, "a good long password\n", "create", "ops"); err != nil || !strings.Contains(out, `"ops" saved`) {
		t.Fatalf("create: %q %v", out, err)
	}
	if _, err := runAdmin(t, dir, "another long password\n", "create", "ops"); err == nil || !strings.Contains(err.Error(), "--replace") {
		t.Fatalf("create twice: %v", err)
	}
	if _, err := runAdmin(t, dir, "another long password", "create", "ops", "--replace"); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if _, err := runAdmin(t, dir, "x\n", "create", "bad name"); err == nil {
		t.Fatal("bad name accepted")
	}
	if out, err = runAdmin(t, dir, "", "list"); err != nil || !strings.Contains(out, "ops") || !strings.Contains(out, "database") {
		t.Fatalf("list: %q %v", out, err)
	}
	// The stored hash is argon2id and matches the replaced password.
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	users, _ := admin.Users(db)
	db.Close()
	if len(users) != 1 || users[0].Username != "ops" || users[0].PasswordHash != "" {
		t.Fatalf("users %+v", users)
	}
	if out, err = runAdmin(t, dir, "", "delete", "ops"); err != nil {
		t.Fatalf("delete: %q %v", out, err)
	}
	if _, err = runAdmin(t, dir, "", "delete", "ops"); err == nil {
		t.Fatal("deleted twice")
	}
	if _, err = runAdmin(t, dir, "", "frobnicate"); err == nil || !strings.Contains(err.Error(), "usage: herald admin") {
		t.Fatalf("usage: %v", err)
	}
}

// While Herald runs it holds the database: create hands the account over
// (data_dir/admin-accounts), delete and list say to stop Herald first.
func TestAdminCreateWhileRunning(t *testing.T) {
	t.Parallel()
	// Only the database is held here: no server takes the account.
	o := defaultRunOptions()
	o.handoverWait = 100 * time.Millisecond
	dir := t.TempDir()
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	defer db.Close()
	out, err := runAdminWith(t, o, dir, "a good long password\n", "create", "ops")
	if err != nil || !strings.Contains(out, "Herald is running") || !strings.Contains(out, `"ops" handed over`) {
		t.Fatalf("create while running: %q %v", out, err)
	}
	raw, err := os.ReadFile(filepath.Join(admin.HandoverDir(dir), "ops.json"))
	if err != nil || !strings.Contains(string(raw), "$argon2id$") || strings.Contains(string(raw), "a good long password") {
		t.Fatalf("hand-over file %q %v", raw, err)
	}
	for _, cmd := range [][]string{{"list"}, {"delete", "ops"}} {
		if _, err := runAdmin(t, dir, "", cmd...); err == nil || !strings.Contains(err.Error(), "stop Herald first") {
			t.Fatalf("%v while running: %v", cmd, err)
		}
	}
}

// With a real server running, create waits for it to take the account: an
// existing one without --replace fails (exit 1) and keeps its password.
func TestAdminCreateExistingWhileServing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base, _ := startServeWith(t, server.Options{Intervals: server.Intervals{Handover: 20 * time.Millisecond}}, []string{"HERALD_DATA_DIR=" + dir, "HERALD_LISTEN=127.0.0.1:0", "HERALD_SERVER_NAME=herald.test"})
	out, err := runAdmin(t, dir, "a good long password\n", "create", "ops")
	if err != nil || !strings.Contains(out, `"ops" saved`) {
		t.Fatalf("create while serving: %q %v", out, err)
	}
	_, err = runAdmin(t, dir, "another long password\n", "create", "ops")
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "exists already") || !strings.Contains(err.Error(), "--replace") {
		t.Fatalf("create of an existing account while serving: %v (exit %d)", err, exitCode(err))
	}
	if code := consoleLogin(t, base, "ops", "a good long password"); code != http.StatusSeeOther {
		t.Fatalf("the first password no longer works: %d", code)
	}
	if out, err := runAdmin(t, dir, "another long password\n", "create", "ops", "--replace"); err != nil || !strings.Contains(out, "saved") {
		t.Fatalf("--replace while serving: %q %v", out, err)
	}
	if code := consoleLogin(t, base, "ops", "another long password"); code != http.StatusSeeOther {
		t.Fatalf("the replaced password does not work: %d", code)
	}
	if ents, _ := os.ReadDir(admin.HandoverDir(dir)); len(ents) != 0 {
		t.Errorf("files left in the hand-over dir: %v", ents)
	}
}

// consoleLogin fills in the console's login form (with its CSRF token)
// and returns the status: 303 for a good password.
func consoleLogin(t *testing.T, base, user, password string) int {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(base + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF field on the login page (%d)", resp.StatusCode)
	}
	resp, err = client.PostForm(base+"/admin/login", url.Values{"csrf": {string(m[1])}, "username": {user}, "password": {password}, "next": {"/admin"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
