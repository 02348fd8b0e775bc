package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runBin runs the built binary with args (after -config) to completion and
// returns its exit code, stdout and stderr.
func (h *herald) runBin(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, append([]string{"-config", h.config}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("herald %v did not finish: %s%s", args, out.String(), errb.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("herald %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// refusal is the one line `herald serve` prints when it refuses to start:
// the whole of its output.
func refusal(t *testing.T, stderr string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "herald: ") {
		t.Fatalf("want one line `herald: ...` and nothing else (no crash), got:\n%s", stderr)
	}
	return lines[0]
}

// newestRoot reads the root bucket's page id and the page size from the
// newest valid meta page of a bbolt file (16-byte page header, then magic,
// version, page size, flags, root page id, ..., txid at +48).
func newestRoot(t *testing.T, path string) (root uint64, pageSize int64) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	pageSize = int64(le.Uint32(raw[16+8:]))
	root, txid := le.Uint64(raw[16+16:]), le.Uint64(raw[16+48:])
	if m1 := raw[pageSize:]; le.Uint64(m1[16+48:]) > txid {
		root = le.Uint64(m1[16+16:])
	}
	return root, pageSize
}

// highWaterMark is the number of pages the newest meta page counts (the
// pgid field at +40) and the page size.
func highWaterMark(t *testing.T, path string) (pages uint64, pageSize int64) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	pageSize = int64(le.Uint32(raw[16+8:]))
	pages, txid := le.Uint64(raw[16+40:]), le.Uint64(raw[16+48:])
	if m1 := raw[pageSize:]; le.Uint64(m1[16+48:]) > txid {
		pages = le.Uint64(m1[16+40:])
	}
	return pages, pageSize
}

func overwritePage(t *testing.T, path string, page uint64, pageSize int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, int(pageSize)), int64(page)*pageSize); err != nil {
		t.Fatal(err)
	}
}

// TestBinaryDataDirIntegrity attacks the built binary's data dir as the
// security review did: keys removed, the database removed, truncated or
// overwritten, a key file whose halves disagree. Each used to start
// (orphaning invites, serving an empty database, publishing one key and
// signing with another) or crash (SIGBUS in bolt.Open, a panic loop in the
// expiry sweep). Now `herald serve` refuses with one line and exit 1,
// `herald check` names the problem, and the documented ways out work.
// Under a running server a damaged database does not take it down.
func TestBinaryDataDirIntegrity(t *testing.T) {
	// bbolt: it damages the bbolt file and runs herald check (page and keys-vs-database checks), bbolt-only.
	h, _, inviterHS, _ := newBoltBinary(t, "", "")
	t.Cleanup(func() {
		if h.cmd != nil {
			h.kill(t)
		}
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	data := filepath.Join(filepath.Dir(h.config), "data")
	dbPath := filepath.Join(data, "herald.db")

	// The first start on an empty data dir just works; store an invite so
	// the database holds something signed.
	h.start(t)
	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": inviterHS.AddUser(alice), "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if json.Unmarshal(body, &reg); status != 200 || reg.Token == "" {
		t.Fatalf("register: %d %s", status, body)
	}
	status, body = h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "bob@example.org", "room_id": "!garden:hs.test", "sender": alice,
	}, reg.Token)
	if status != 200 {
		t.Fatalf("store-invite: %d %s", status, body)
	}
	// A running Herald holds the database: check says so and changes nothing.
	if code, _, stderr := h.runBin(t, "check"); code != 1 || !strings.Contains(stderr, "in use") {
		t.Fatalf("check on a running Herald: exit %d\n%s", code, stderr)
	}
	h.stop(t)
	code, stdout, stderr := h.runBin(t, "check")
	if code != 0 || !strings.Contains(stdout, "ok") {
		t.Fatalf("check on a good data dir: exit %d\n%s%s", code, stdout, stderr)
	}
	backup := t.TempDir()
	if err := os.CopyFS(backup, os.DirFS(data)); err != nil {
		t.Fatal(err)
	}
	restore := func(t *testing.T) {
		t.Helper()
		if err := os.RemoveAll(data); err != nil {
			t.Fatal(err)
		}
		if err := os.CopyFS(data, os.DirFS(backup)); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := func() string {
		m, _ := filepath.Glob(filepath.Join(data, "keys", "ed25519_*.jwk"))
		if len(m) != 1 {
			t.Fatalf("key files %v", m)
		}
		return m[0]
	}

	for _, c := range []struct {
		name   string
		damage func(t *testing.T)
		want   string // in the refusal and in check's output
	}{
		{"ring.json removed", func(t *testing.T) { os.Remove(filepath.Join(data, "keys", "ring.json")) }, "holds none"},
		{"keys emptied", func(t *testing.T) {
			os.RemoveAll(filepath.Join(data, "keys"))
			os.Mkdir(filepath.Join(data, "keys"), 0o700)
		}, "holds none"},
		{"herald.db deleted", func(t *testing.T) { os.Remove(dbPath) }, "records none"},
		{"herald.db truncated to 0", func(t *testing.T) { os.Truncate(dbPath, 0) }, "records none"},
		{"herald.db truncated", func(t *testing.T) {
			// Cut below the pages the meta page counts: bolt.Open used to
			// die with SIGBUS (fatal error: fault).
			pages, pageSize := highWaterMark(t, dbPath)
			os.Truncate(dbPath, int64(pages)*pageSize-pageSize/2)
		}, "truncated"},
		{"herald.db page overwritten", func(t *testing.T) {
			root, pageSize := newestRoot(t, dbPath)
			overwritePage(t, dbPath, root, pageSize)
		}, "damaged"},
		{"key halves disagree", func(t *testing.T) {
			path := keyFile()
			raw, _ := os.ReadFile(path)
			var jwk map[string]any
			json.Unmarshal(raw, &jwk)
			jwk["x"] = base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
			raw, _ = json.Marshal(jwk)
			os.WriteFile(path, raw, 0o600)
		}, "public key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			restore(t)
			c.damage(t)
			for range 2 { // a refused start changes nothing: it refuses again
				code, _, stderr := h.runBin(t, "serve")
				line := refusal(t, stderr)
				if code != 1 || !strings.Contains(line, c.want) || !strings.Contains(line, "restore") {
					t.Fatalf("serve: exit %d, %q; want exit 1 and one line with %q and how to restore", code, line, c.want)
				}
			}
			code, stdout, _ := h.runBin(t, "check")
			if code != 1 || !strings.Contains(stdout, c.want) {
				t.Fatalf("check: exit %d, want 1 and %q in:\n%s", code, c.want, stdout)
			}
		})
	}

	// The deliberate fresh start: give up the lost key, then serve.
	restore(t)
	os.Remove(filepath.Join(data, "keys", "ring.json"))
	if code, stdout, stderr := h.runBin(t, "keys", "adopt"); code != 0 || !strings.Contains(stdout, "gave up") {
		t.Fatalf("keys adopt: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, _ := h.runBin(t, "check"); code != 0 {
		t.Fatalf("check after adopt: exit %d\n%s", code, stdout)
	}
	h.start(t)
	h.stop(t)

	// Restoring the backup is the other way out.
	restore(t)
	h.start(t)

	// A page damaged under the running server: it keeps serving (a read of
	// the damaged data is a Matrix 500, not a crash), then, stopped, it
	// refuses to start on the damaged file.
	root, pageSize := newestRoot(t, dbPath)
	overwritePage(t, dbPath, root, pageSize)
	for range 3 {
		status, body = h.do(t, "GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key=abc", nil, "")
		expectErr(t, status, body, 500, "M_UNKNOWN")
		status, body = h.do(t, "GET", "/_matrix/identity/versions", nil, "")
		if status != 200 {
			t.Fatalf("versions on a damaged database: %d %s", status, body)
		}
	}
	if h.cmd.ProcessState != nil {
		t.Fatal("herald exited")
	}
	h.stop(t)
	code, _, stderr = h.runBin(t, "serve")
	if line := refusal(t, stderr); code != 1 || !strings.Contains(line, "damaged") {
		t.Fatalf("serve on the damaged database: exit %d %q", code, line)
	}
}
