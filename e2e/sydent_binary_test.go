package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/store"
)

// buildHerald builds the herald binary.
func buildHerald(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "herald")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/herald-im/herald/cmd/herald").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// importConfig writes a config file whose data_dir is a fresh directory.
func importConfig(t *testing.T) (config, dataDir string) {
	t.Helper()
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	config = filepath.Join(dir, "herald.yaml")
	cfg := fmt.Sprintf("server_name: sydent-a.example.org\npublic_base_url: https://sydent-a.example.org\ndata_dir: %s\n", dataDir)
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return config, dataDir
}

func runBinary(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// countBindings counts the bindings in a (closed) data_dir.
func countBindings(t *testing.T, dataDir string) int {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dataDir, store.FileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	_ = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("identity_bindings")); b != nil {
			n = b.Stats().KeyN
		}
		for err := range tx.Check() {
			t.Errorf("bbolt consistency check: %v", err)
		}
		return nil
	})
	return n
}

// TestSydentImportBinary runs `herald import sydent` on the fixture: counts
// on stdout, a second run changes nothing, and a damaged database is
// refused with one line on stderr and exit status 1.
func TestSydentImportBinary(t *testing.T) {
	dir := sydentfixture.Dir(t, "sydent-a")
	bin := buildHerald(t)
	config, dataDir := importConfig(t)
	// A sydent template copied in unconverted stops `herald serve`, not the
	// import (which sends no mail).
	tpl := t.TempDir()
	if err := os.WriteFile(filepath.Join(tpl, "invite.eml"), []byte("To: %(to)s\nSubject: x\n\n%(token)s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "email:\n  templates_dir: %s\n", tpl)
	f.Close()
	args := []string{"-config", config, "import", "sydent", "--db", filepath.Join(dir, "sydent.db"), "--sydent-config", filepath.Join(dir, "sydent.conf")}

	out, errOut, code := runBinary(t, bin, args...)
	if code != 0 || !strings.Contains(out, "bindings: 32 imported") || !strings.Contains(out, "pending invites: 25 imported") ||
		!strings.Contains(out, "signing key ed25519:0: imported") {
		t.Fatalf("import: exit %d\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = runBinary(t, bin, args...)
	if code != 0 || !strings.Contains(out, "nothing changed") || !strings.Contains(out, "bindings: 0 imported, 32 already there") {
		t.Fatalf("second import: exit %d\n%s\n%s", code, out, errOut)
	}
	if n := countBindings(t, dataDir); n != 32 {
		t.Errorf("%d bindings stored, want 32", n)
	}
	if _, errOut, code := runBinary(t, bin, "-config", config, "serve"); code != 1 || !strings.Contains(errOut, "sydent template syntax") {
		t.Errorf("serve with an unconverted sydent template: exit %d\n%s", code, errOut)
	}

	raw, err := os.ReadFile(filepath.Join(dir, "sydent.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 4096 + 100; i < len(raw)-4096; i += 4096 {
		copy(raw[i:], bytes.Repeat([]byte{0x5A}, 300))
	}
	damaged := filepath.Join(t.TempDir(), "sydent.db")
	if err := os.WriteFile(damaged, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	args[len(args)-3] = damaged
	out, errOut, code = runBinary(t, bin, args...)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "herald: sydent database "+damaged+": damaged") {
		t.Fatalf("damaged database: exit %d, stderr %q, stdout %q", code, errOut, out)
	}
}

// TestSydentImportKilled: `herald import sydent` killed with SIGKILL, or
// interrupted with SIGINT, in the middle of a large import leaves a data_dir
// with all of the import or none of it, and running it again completes.
func TestSydentImportKilled(t *testing.T) {
	const n = 50_000
	g, err := sydentfixture.Generate(context.Background(), t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildHerald(t)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			config, dataDir := importConfig(t)
			args := []string{"-config", config, "import", "sydent", "--db", g.DB, "--sydent-config", g.Config}
			cmd := exec.Command(bin, args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The signing key is written just before the database
			// transaction starts: signal then.
			waitFor(t, "the import to reach its transaction", func() bool {
				_, err := os.Stat(filepath.Join(dataDir, "keys", "ed25519_0.jwk"))
				return err == nil
			})
			_ = cmd.Process.Signal(sig)
			err := cmd.Wait()
			got := countBindings(t, dataDir)
			switch {
			case got == 0 && err != nil:
				t.Logf("%s landed mid-import: nothing imported (%v)\n%s", sig, err, out.String())
				if sig == syscall.SIGINT && !strings.Contains(out.String(), "import interrupted; nothing was written to the database") {
					t.Errorf("SIGINT: output does not say the import was interrupted:\n%s", out.String())
				}
			case got == n && err == nil:
				t.Logf("the import finished before %s", sig)
			default:
				t.Fatalf("after %s: %d of %d bindings stored (exit %v)\n%s", sig, got, n, err, out.String())
			}
			o, e, code := runBinary(t, bin, args...)
			if code != 0 || countBindings(t, dataDir) != n {
				t.Fatalf("import after %s: exit %d, %d bindings\n%s%s", sig, code, countBindings(t, dataDir), o, e)
			}
		})
	}
}
