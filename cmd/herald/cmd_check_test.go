package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

func checkCLI(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"check"}, args...), []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_SERVER_NAME=herald.test"}, &out, io.Discard)
	return out.String(), err
}

// herald check on the configured data dir, on another one given as an
// argument (a backup copy), and its exit statuses.
func TestCheckCommand(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	cfg := config.Default()
	cfg.ServerName, cfg.DataDir = "herald.test", dataDir
	a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	out, err := checkCLI(t, dataDir)
	if err != nil || !strings.Contains(out, "herald.db: ok") || !strings.Contains(out, "keys: ok") || !strings.HasSuffix(out, "ok\n") {
		t.Fatalf("check: %v\n%s", err, out)
	}

	// A copy whose database was truncated: checked by naming it, while the
	// configured data dir stays fine.
	copyDir := t.TempDir()
	if err := os.CopyFS(copyDir, os.DirFS(dataDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(copyDir, store.FileName), 5000); err != nil {
		t.Fatal(err)
	}
	out, err = checkCLI(t, dataDir, copyDir)
	if !errors.Is(err, errCheckFailed) || exitCode(err) != 1 || !strings.Contains(out, copyDir) || !strings.Contains(out, "damaged") {
		t.Fatalf("check of a damaged copy: %v (exit %d)\n%s", err, exitCode(err), out)
	}
	if out, err = checkCLI(t, dataDir); err != nil {
		t.Fatalf("the configured data dir: %v\n%s", err, out)
	}

	if _, err := checkCLI(t, dataDir, "a", "b"); exitCode(err) != 2 {
		t.Fatalf("two arguments: %v, want a usage error", err)
	}
	if _, err := checkCLI(t, dataDir, filepath.Join(dataDir, "nope")); err == nil || exitCode(err) != 1 {
		t.Fatalf("a missing dir: %v", err)
	}
	if out, err := checkCLI(t, dataDir, "help"); err != nil || !strings.Contains(out, "usage: herald check") {
		t.Fatalf("help: %v %s", err, out)
	}
}
