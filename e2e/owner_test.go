//go:build linux

package e2e

import (
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// ownersIn maps each path under dir (dir included) to its owner's uid.
func ownersIn(t *testing.T, dir string) map[string]uint32 {
	t.Helper()
	out := map[string]uint32{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(path)
		if err != nil {
			return err
		}
		out[path] = st.Sys().(*syscall.Stat_t).Uid
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkOwner(t *testing.T, dir string, uid uint32) {
	t.Helper()
	n := 0
	for path, got := range ownersIn(t, dir) {
		n++
		if got != uid {
			t.Errorf("%s belongs to uid %d, want %d", path, got, uid)
		}
	}
	if n < 3 {
		t.Errorf("%s holds only %d entries", dir, n)
	}
}

// Run as root on a data_dir owned by another user (nobody, 65534: the
// systemd unit runs Herald as its own user), commands write their files as
// that user: the server, running as that user, reads them. Before this,
// `keys rotate` as root left a root-owned ring.json the server could not
// read, and it then refused to start.
func TestCommandsAsRootKeepDataDirOwner(t *testing.T) {
	// bbolt: the files these commands write in data_dir (ring.json, herald.db, the backup) are bbolt's; on PostgreSQL they write to the database.
	h, _, _, _ := newBoltBinary(t, "", "")
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	data := h.dataDir()
	if os.Geteuid() != 0 {
		// Not root: nothing to switch; the command writes as its user.
		h.mustCLI(t, "", "keys", "rotate")
		checkOwner(t, data, uint32(os.Getuid()))
		return
	}
	const nobody = 65534
	// The server's user must reach data_dir and the binary.
	for _, d := range []string{filepath.Dir(h.config), filepath.Dir(filepath.Dir(h.config))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, nobody, nobody); err != nil {
		t.Fatal(err)
	}

	// Herald stopped: the command opens (here: creates) the data dir itself.
	h.mustCLI(t, "", "keys", "rotate")
	checkOwner(t, data, nobody)

	// The server, as nobody, starts on what the root-run command wrote.
	h.cmd = exec.Command(h.bin, "-config", h.config, "serve")
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	// nobody cannot read root's 0600 config: hand it a copy it owns.
	raw, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(filepath.Dir(h.config), "herald-nobody.yaml")
	if err := os.WriteFile(cfg, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	h.cmd.Args = []string{h.bin, "-config", cfg, "serve"}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "herald (as nobody) to listen", func() bool {
		resp, err := http.Get(h.url + "/_matrix/identity/versions")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// Herald running: root's commands go through the control socket.
	h.mustCLI(t, "", "keys", "rotate")
	ids := keyIDs(h.mustCLI(t, "", "keys", "list"))
	// The first rotate made the ring's first key and a second one.
	if len(ids) != 3 {
		t.Fatalf("keys: %v", ids)
	}
	if status, body := h.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(ids[0]), nil, ""); status != 200 {
		t.Fatalf("rotated key not served: %d %s", status, body)
	}
	// Another (non-root) user may not use the socket, and is told whom to run as.
	stranger := filepath.Join(filepath.Dir(h.config), "herald-stranger.yaml")
	if err := os.WriteFile(stranger, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(h.bin, "-config", stranger, "keys", "list")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody - 1, Gid: nobody - 1}}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "permission denied: run the command as the user Herald runs as") {
		t.Errorf("keys list by another user: %v %s", err, out)
	}
	backup := filepath.Join(filepath.Dir(h.config), "backup")
	if out := h.mustCLI(t, "", "backup", backup); !strings.Contains(out, "backed up") {
		t.Fatalf("backup: %s", out)
	}
	checkOwner(t, backup, nobody)
	h.stop(t)

	// Stopped again: root's command switches to nobody.
	h.mustCLI(t, "", "keys", "rotate")
	h.mustCLI(t, "", "lookup", "rotate-pepper")
	checkOwner(t, data, nobody)
}
