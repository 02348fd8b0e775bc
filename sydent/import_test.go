package sydent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/sydent"
)

func testConfig(t testing.TB, dataDir string) *config.Config {
	t.Helper()
	c := config.Default()
	c.ServerName = "sydent-a.example.org"
	c.PublicBaseURL = "https://sydent-a.example.org"
	c.DataDir = dataDir
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// importInto runs the import as `herald import sydent` does: the App built
// on the data_dir (not started), then sydent.Import.
func importInto(ctx context.Context, t testing.TB, cfg *config.Config, dbPath, confPath string, opts sydent.Options) (*sydent.Report, error) {
	t.Helper()
	scfg, err := sydent.ReadConfig(confPath)
	if err != nil {
		return nil, err
	}
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	defer a.Close()
	return sydent.Import(ctx, sydent.Target{DB: a.DB(), Identity: a.Identity(), Invites: a.Invites(),
		Ring: a.Ring(), Ephemeral: a.Ephemeral()}, dbPath, scfg, opts)
}

// snapshot is every key and value in the data_dir's database and every
// file under data_dir/keys, hashed: two equal snapshots mean nothing changed.
func snapshot(t *testing.T, dataDir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	db, err := bolt.Open(filepath.Join(dataDir, store.FileName), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var walk func(prefix string, b *bolt.Bucket) error
		walk = func(prefix string, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return walk(prefix+string(k)+"/", b.Bucket(k))
				}
				out[prefix+string(k)] = fmt.Sprintf("%x", sha256.Sum256(v))
				return nil
			})
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(string(name)+"/", b) })
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = filepath.WalkDir(filepath.Join(dataDir, "keys"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			raw, _ := os.ReadFile(p)
			out["file:"+p] = fmt.Sprintf("%x", sha256.Sum256(raw))
		}
		return nil
	})
	return out
}

func TestImportFixtureCountsAndIdempotence(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	m := sydentfixture.Load(t, dir)
	data := t.TempDir()
	cfg := testConfig(t, data)
	r, err := importInto(context.Background(), t, cfg, filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf"), sydent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first import:\n%s", r)
	if r.Key != "imported" || r.Pepper != "imported" {
		t.Errorf("key %q pepper %q, want both imported", r.Key, r.Pepper)
	}
	if r.Bindings.Imported != len(m.Bindings) {
		t.Errorf("bindings imported %d, want %d (manifest)", r.Bindings.Imported, len(m.Bindings))
	}
	if r.Invites.Imported != len(m.PendingInvites) {
		t.Errorf("invites imported %d, want %d", r.Invites.Imported, len(m.PendingInvites))
	}
	if got, want := r.EphemeralKeys.Imported, m.SQLite.Tables["ephemeral_public_keys"]; got != want {
		t.Errorf("ephemeral keys imported %d, want %d", got, want)
	}
	if r.Accounts.Imported != len(m.Accounts) {
		t.Errorf("access tokens imported %d, want %d", r.Accounts.Imported, len(m.Accounts))
	}
	if n := r.Bindings.Skipped["unbound in sydent (tombstone)"]; n != len(m.Unbound) {
		t.Errorf("tombstones reported %d, want %d: %v", n, len(m.Unbound), r.Bindings.Skipped)
	}
	if !strings.Contains(r.String(), "not imported: 35 email validation sessions") {
		t.Errorf("report does not name the validation sessions left behind:\n%s", r)
	}

	before := snapshot(t, data)
	r2, err := importInto(context.Background(), t, cfg, filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf"), sydent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Changed() {
		t.Errorf("second import reports changes:\n%s", r2)
	}
	if r2.Bindings.Unchanged != len(m.Bindings) || r2.Invites.Unchanged != len(m.PendingInvites) || r2.Accounts.Unchanged != len(m.Accounts) {
		t.Errorf("second import does not count everything as already there:\n%s", r2)
	}
	after := snapshot(t, data)
	if d := diff(before, after); d != "" {
		t.Errorf("second import changed the data_dir: %s", d)
	}
}

func diff(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, "changed or removed "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, "added "+k)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestImportRefusesBadDatabases: a damaged, a foreign and a non-SQLite file
// are each refused with one line naming the file and the reason, before
// anything is written.
func TestImportRefusesBadDatabases(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	tmp := t.TempDir()

	damaged := filepath.Join(tmp, "damaged.db")
	raw, err := os.ReadFile(filepath.Join(dir, "sydent.db"))
	if err != nil {
		t.Fatal(err)
	}
	// Overwrite pages after the schema page: the tables' b-trees break.
	for i := 4096 + 100; i < len(raw)-4096; i += 4096 {
		copy(raw[i:], bytes.Repeat([]byte{0xA5}, 200))
	}
	if err := os.WriteFile(damaged, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	foreign := filepath.Join(tmp, "foreign.db")
	db, err := sql.Open("sqlite", foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE users (id integer primary key, name text)"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	notSQLite := filepath.Join(tmp, "notes.db")
	if err := os.WriteFile(notSQLite, bytes.Repeat([]byte("not a database\n"), 500), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct{ path, want string }{
		{damaged, "damaged"},
		{foreign, "not a sydent database (no table global_threepid_associations)"},
		{notSQLite, "not a readable SQLite database"},
		{filepath.Join(tmp, "missing.db"), "no such file"},
	} {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			data := t.TempDir()
			_, err := importInto(context.Background(), t, testConfig(t, data), c.path, filepath.Join(dir, "sydent.conf"), sydent.Options{})
			if err == nil {
				t.Fatal("import succeeded")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) || !strings.Contains(msg, filepath.Base(c.path)) {
				t.Errorf("error %q: want one line naming the file and %q", msg, c.want)
			}
			if testing.Verbose() {
				t.Log(msg)
			}
			if _, ok := snapshot(t, data)["identity_bindings/"]; ok {
				t.Error("something was imported")
			}
			for k := range snapshot(t, data) {
				if strings.HasPrefix(k, "sydent_import/") || strings.HasPrefix(k, "invites/") {
					t.Errorf("written despite the refusal: %s", k)
				}
			}
		})
	}
}

func TestImportRefusesDataDirWithDataUnlessMerge(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	data := t.TempDir()
	cfg := testConfig(t, data)
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Identity().CreateAccount("@someone:herald.test"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	db, conf := filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf")
	_, err = importInto(context.Background(), t, cfg, db, conf, sydent.Options{})
	if !errors.Is(err, sydent.ErrHasData) {
		t.Fatalf("import into a data_dir with data: %v, want ErrHasData", err)
	}
	r, err := importInto(context.Background(), t, cfg, db, conf, sydent.Options{Merge: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Bindings.Imported == 0 || r.Invites.Imported == 0 {
		t.Errorf("merge imported nothing:\n%s", r)
	}
}

// cancelAfter is a context whose Err reports cancellation from its n-th call
// on: the import checks it once per row, so the import stops mid-way.
type cancelAfter struct {
	context.Context
	n atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestInterruptedImportWritesNothingAndResumes(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	data := t.TempDir()
	cfg := testConfig(t, data)
	db, conf := filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf")
	ctx := &cancelAfter{Context: context.Background()}
	ctx.n.Store(60) // past the bindings, inside the invites
	_, err := importInto(ctx, t, cfg, db, conf, sydent.Options{})
	if err == nil || !strings.Contains(err.Error(), "interrupted; nothing was written") {
		t.Fatalf("interrupted import: %v", err)
	}
	for k := range snapshot(t, data) {
		if strings.HasPrefix(k, "identity_bindings/") || strings.HasPrefix(k, "invites/") || strings.HasPrefix(k, "sydent_import/") || strings.HasPrefix(k, "identity_accounts/") {
			t.Fatalf("the interrupted import left %s behind", k)
		}
	}
	r, err := importInto(context.Background(), t, cfg, db, conf, sydent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Bindings.Imported == 0 || r.Invites.Imported == 0 || r.Key != "unchanged" {
		t.Errorf("the run after the interruption:\n%s", r)
	}
}

func TestImportedInviteRecord(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	m := sydentfixture.Load(t, dir)
	data := t.TempDir()
	cfg := testConfig(t, data)
	cfg.ServerName = "herald.example.org" // Herald under a new name: imported invites keep sydent's
	if _, err := importInto(context.Background(), t, cfg, filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf"), sydent.Options{}); err != nil {
		t.Fatal(err)
	}
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, p := range m.PendingInvites {
		inv, err := a.Invites().ByToken(p.Token)
		if err != nil {
			t.Fatalf("invite %s…: %v", p.Token[:8], err)
		}
		if inv.RoomID != p.RoomID || inv.Sender != p.Sender || inv.Address != p.Address || inv.State != invites.StatePending ||
			inv.KeyID != m.SigningKey.KeyID || inv.PublicKey != m.SigningKey.PublicKey || inv.SignAs != m.ServerName ||
			!inv.ExpiresAt.IsZero() {
			t.Errorf("imported invite %+v does not match the manifest's %+v", inv, p)
		}
	}
	for _, d := range m.DeliveredInvites {
		if _, err := a.Invites().ByToken(d.Token); !errors.Is(err, invites.ErrNotFound) {
			t.Errorf("delivered invite %s… was imported (%v)", d.Token[:8], err)
		}
	}
	k, ok := a.Ring().Published(m.SigningKey.KeyID)
	if !ok || k.PublicBase64() != m.SigningKey.PublicKey || k.Current {
		t.Errorf("ring key %s: %+v published %v; want sydent's key, not current", m.SigningKey.KeyID, k.PublicBase64(), ok)
	}
}

func TestImportedInviteExpiry(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	m := sydentfixture.Load(t, dir)
	data := t.TempDir()
	cfg := testConfig(t, data)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	if _, err := importInto(context.Background(), t, cfg, filepath.Join(dir, "sydent.db"), filepath.Join(dir, "sydent.conf"),
		sydent.Options{InviteExpiry: 48 * time.Hour, Now: func() time.Time { return now }}); err != nil {
		t.Fatal(err)
	}
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, p := range m.PendingInvites {
		inv, err := a.Invites().ByToken(p.Token)
		if err != nil {
			t.Fatal(err)
		}
		if !inv.ExpiresAt.Equal(now.Add(48 * time.Hour)) {
			t.Errorf("invite expires at %s, want 48h after the import", inv.ExpiresAt)
		}
	}
}
