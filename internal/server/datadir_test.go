package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

func dataDirConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.ServerName = "herald.test"
	cfg.PublicBaseURL = "http://127.0.0.1:1"
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = dir
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// open runs server.New on dir and closes the App again; it returns New's
// error and what it logged.
func open(t *testing.T, dir string) (error, string) {
	t.Helper()
	var logs testenv.SyncBuffer
	a, err := server.New(dataDirConfig(t, dir), slog.New(slog.NewTextHandler(&logs, nil)), server.Options{})
	if err == nil {
		a.Close()
	}
	return err, logs.String()
}

func issued(t *testing.T, dir string) (ids []string, kept bool) {
	t.Helper()
	db, err := store.OpenReadOnly(filepath.Join(dir, store.FileName), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ks, kept, err := store.IssuedKeys(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if k.Lost.IsZero() {
			ids = append(ids, k.ID)
		}
	}
	return ids, kept
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// Herald used to start on whatever it found: with data_dir/keys emptied it
// generated a new key (orphaning every invite signed before), with herald.db
// gone it started empty next to the old keys. Now the database records the
// key ids it was used with and start-up refuses a mismatch, in one line that
// says how to recover; `herald keys adopt` is the deliberate fresh start.
func TestStartRefusesKeysAndDatabaseThatDisagree(t *testing.T) {
	t.Parallel()
	good := t.TempDir()
	// The very first start on an empty data dir just works.
	if err, logs := open(t, good); err != nil || !strings.Contains(logs, "generated the first signing key") {
		t.Fatalf("first start: %v\n%s", err, logs)
	}
	ring, err := keys.LoadRing(filepath.Join(good, "keys"), "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	first := ring.Current().ID
	if ids, kept := issued(t, good); !kept || !slices.Equal(ids, []string{first}) {
		t.Fatalf("recorded %v (kept %v), want [%s]", ids, kept, first)
	}
	if err, _ := open(t, good); err != nil {
		t.Fatalf("second start: %v", err)
	}

	for _, c := range []struct {
		name   string
		damage func(dir string)
		want   string
	}{
		{"keys dir emptied", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "keys"))
			os.Mkdir(filepath.Join(dir, "keys"), 0o700)
		}, "records signing keys " + first + " but"},
		{"ring.json removed", func(dir string) { os.Remove(filepath.Join(dir, "keys", "ring.json")) }, "records signing keys " + first + " but"},
		{"keys replaced by another ring", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "keys"))
			keys.OpenRing(filepath.Join(dir, "keys"), "herald.test")
		}, "records signing keys " + first + " that"},
		{"herald.db deleted", func(dir string) { os.Remove(filepath.Join(dir, store.FileName)) }, "records none"},
		{"herald.db truncated to 0", func(dir string) { os.Truncate(filepath.Join(dir, store.FileName), 0) }, "records none"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, good, dir)
			c.damage(dir)
			for range 2 { // and again: a refused start changes nothing
				err, _ := open(t, dir)
				if !errors.Is(err, server.ErrKeysMismatch) || !strings.Contains(err.Error(), c.want) ||
					!strings.Contains(err.Error(), "herald keys adopt") || !strings.Contains(err.Error(), "restore") || strings.Contains(err.Error(), "\n") {
					t.Fatalf("start: %v, want one line with %q, restore and herald keys adopt", err, c.want)
				}
			}
		})
	}

	// Keys rotated while Herald was stopped are recorded at the next start.
	ring.Rotate()
	if err, _ := open(t, good); err != nil {
		t.Fatalf("start after an offline rotation: %v", err)
	}
	if ids, _ := issued(t, good); len(ids) != 2 || !slices.Contains(ids, ring.Current().ID) {
		t.Fatalf("recorded %v, want both keys", ids)
	}
}

// A data dir from Herald 0.1 has keys and a database without the record:
// it adopts the keys it has, once, and is checked from then on.
func TestStartAdoptsKeysOfAnOlderDataDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err, _ := open(t, dir); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("issued_keys")) })
	db.Close()
	if _, kept := issued(t, dir); kept {
		t.Fatal("the record is still there")
	}
	if err, logs := open(t, dir); err != nil || !strings.Contains(logs, "Herald 0.1") {
		t.Fatalf("start of a 0.1 data dir: %v\n%s", err, logs)
	}
	if ids, kept := issued(t, dir); !kept || len(ids) != 1 {
		t.Fatalf("recorded %v %v", ids, kept)
	}
	// A 0.1 database whose keys are gone is refused too.
	db, _ = bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
	db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("issued_keys")) })
	db.Close()
	os.RemoveAll(filepath.Join(dir, "keys"))
	if err, _ := open(t, dir); !errors.Is(err, server.ErrKeysMismatch) {
		t.Fatalf("0.1 database without keys: %v", err)
	}
}

// A key rotated while Herald runs (herald keys rotate) is recorded in the
// database when the server picks it up, before it signs anything.
func TestRunningServerRecordsRotatedKeys(t *testing.T) {
	t.Parallel()
	// bbolt: the ring.json files and their record in the database (the keys-vs-database check) are bbolt's; PostgreSQL keeps keys in signing_keys.
	e := testenv.Start(t, testenv.Bolt)
	other, err := keys.LoadRing(filepath.Join(e.DataDir, "keys"), testenv.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	k, err := other.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	// The server notices the change by ring.json's mtime: make it differ
	// even on a file system with coarse timestamps.
	later := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(e.DataDir, "keys", "ring.json"), later, later)
	if err := e.App.Ring().ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	if e.App.Ring().Current().ID != k.ID {
		t.Fatal("the server did not pick the new key up")
	}
	ks, _, err := store.IssuedKeys(e.App.DB().Bolt())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ks, func(ik store.IssuedKey) bool { return ik.ID == k.ID }) {
		t.Fatalf("recorded %+v, want %s", ks, k.ID)
	}
}

// rootPage is the page of herald.db's root bucket, read from its newest
// valid meta page (bbolt's layout: 16-byte page header, then magic,
// version, page size, flags, root page id, ..., txid at +48).
func rootPage(t *testing.T, path string) (root uint64, pageSize int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 80)
	f.ReadAt(buf, 0)
	le := binary.LittleEndian
	pageSize = int64(le.Uint32(buf[16+8:]))
	root, txid := le.Uint64(buf[16+16:]), le.Uint64(buf[16+48:])
	f.ReadAt(buf, pageSize)
	if le.Uint64(buf[16+48:]) > txid {
		root = le.Uint64(buf[16+16:])
	}
	return root, pageSize
}

func damagePage(t *testing.T, path string, page uint64, pageSize int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := make([]byte, pageSize)
	for i := range garbage {
		garbage[i] = 0xa5
	}
	if _, err := f.WriteAt(garbage, int64(page)*pageSize); err != nil {
		t.Fatal(err)
	}
}

// A page of herald.db damaged under a running server: the expiry sweep
// (and every worker reading the database) panicked, and a panic in a
// background goroutine ended the process. Now each panic is logged and
// counted (background.Panics), the task restarts after a pause, the server
// keeps answering (requests that read the database get a Matrix 500), and
// store.Usable says the database is not usable. The next start refuses it.
func TestDamagedDatabaseUnderARunningServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var logs testenv.SyncBuffer
	cfg := dataDirConfig(t, dir)
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(&logs, nil)), server.Options{Intervals: server.Intervals{Restart: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := store.Usable(a.DB().Bolt()); err != nil {
		t.Fatalf("Usable on a good database: %v", err)
	}
	path := filepath.Join(dir, store.FileName)
	root, pageSize := rootPage(t, path)
	damagePage(t, path, root, pageSize)

	before := background.Panics()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.Start(ctx) // the expiry sweep and the mail worker read the database at once
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	client := &http.Client{Transport: spectest.Transport(t, nil), Timeout: 10 * time.Second}

	deadline := time.Now().Add(10 * time.Second)
	// The mail and onbind workers panic on the damaged page too, as fast
	// as they restart: wait for the sweep's own panic as well as the count.
	for (background.Panics() < before+3 || !strings.Contains(logs.String(), "panic in invite expiry sweep (recovered")) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := background.Panics() - before; n < 3 {
		t.Fatalf("recovered %d background panics, want the sweep to panic, restart and panic again\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "panic in invite expiry sweep (recovered") {
		t.Fatalf("the sweep's panic was not logged:\n%s", logs.String())
	}
	get := func(path string) (int, string) {
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, body := get("/_matrix/identity/versions"); status != 200 {
		t.Fatalf("versions: %d %s", status, body)
	}
	if status, body := get("/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key=abc"); status != 500 || !strings.Contains(body, "M_UNKNOWN") {
		t.Fatalf("a read of the damaged database: %d %s, want a Matrix 500", status, body)
	}
	if err := store.Usable(a.DB().Bolt()); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("Usable on a damaged database: %v", err)
	}
	cancel()
	a.Close()
	if err, _ := open(t, dir); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("restart on the damaged database: %v", err)
	}
}
