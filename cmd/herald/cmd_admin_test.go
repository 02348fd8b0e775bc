package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/store"
)

func runAdmin(t *testing.T, dataDir, stdin string, args ...string) (string, error) {
	t.Helper()
	old := adminStdin
	adminStdin = strings.NewReader(stdin)
	defer func() { adminStdin = old }()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"admin"}, args...), []string{"HERALD_DATA_DIR=" + dataDir}, &out, io.Discard)
	return out.String(), err
}

func TestAdminCommand(t *testing.T) {
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
	db, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
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
	dir := t.TempDir()
	db, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out, err := runAdmin(t, dir, "a good long password\n", "create", "ops")
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
