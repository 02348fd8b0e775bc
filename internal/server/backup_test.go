package server_test

import (
	"archive/tar"
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

// Backup copies keys and self-signed TLS material with their modes, leaves
// out the control socket and temporary files, and refuses a target inside
// data_dir or one that is not empty.
func TestBackupRefusesAndCopies(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.SMTP.Host = ""
	a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, f := range []string{"control.sock", ".tmp-half", "tls/cert.pem", store.CleanName} {
		p := filepath.Join(cfg.DataDir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Backup(filepath.Join(cfg.DataDir, "b")); err == nil || !strings.Contains(err.Error(), "inside data_dir") {
		t.Fatalf("backup inside data_dir: %v", err)
	}
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Backup(full); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("backup into a non-empty dir: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	info, err := a.Backup(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Schema != store.SchemaVersion || info.DBBytes == 0 || len(info.KeyIDs) != 1 {
		t.Fatalf("info %+v", info)
	}
	jwk := filepath.Join(dir, "keys", strings.ReplaceAll(info.KeyIDs[0], ":", "_")+".jwk")
	for _, f := range []string{"herald.db", "keys/ring.json", jwk, "tls/cert.pem"} {
		if !filepath.IsAbs(f) {
			f = filepath.Join(dir, f)
		}
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, st, err)
		}
	}
	for _, f := range []string{"control.sock", ".tmp-half", ".tmp-herald.db", store.CleanName} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s copied: %v", f, err)
		}
	}
}

// ExtractBackup writes only inside its directory and only files and
// directories, and leaves nothing behind when it refuses a stream.
func TestExtractBackupRefusesBadStreams(t *testing.T) {
	t.Parallel()
	for name, entry := range map[string]*tar.Header{
		"escape":   {Typeflag: tar.TypeReg, Name: "../evil", Mode: 0o600, Size: 1},
		"absolute": {Typeflag: tar.TypeReg, Name: "/tmp/evil", Mode: 0o600, Size: 1},
		"symlink":  {Typeflag: tar.TypeSymlink, Name: "keys", Linkname: "/etc", Mode: 0o777},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "herald.db", Mode: 0o600, Size: 2})
		_, _ = tw.Write([]byte("db"))
		_ = tw.WriteHeader(entry)
		if entry.Size > 0 {
			_, _ = tw.Write([]byte("x"))
		}
		_ = tw.Close()
		dir := filepath.Join(t.TempDir(), "b")
		if _, err := server.ExtractBackup(&buf, dir, "herald.test"); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: left %d entries", name, len(ents))
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(t.TempDir()), "evil")); !os.IsNotExist(err) {
		t.Errorf("wrote outside: %v", err)
	}
}
