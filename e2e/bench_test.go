package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// herald bench populate stopped with SIGINT keeps what it committed and
// says how far it got; run again, it adds only what is missing, and the
// invites' counters agree with the records.
func TestBenchPopulateInterruptedAndResumed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bench")
	env := cleanEnv("HERALD_DATA_DIR="+filepath.Join(t.TempDir(), "unused"), "HERALD_SERVER_NAME=herald.test")
	cmd := exec.Command(builtHerald(t), "bench", "populate", "--invites", "1000000", "--bindings", "0", dir)
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the first transactions are in the file.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, err := os.Stat(filepath.Join(dir, "herald.db")); err == nil && st.Size() > 8<<20 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("herald.db did not grow: %s %s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	m := regexp.MustCompile(`invites: (\d+)/1000000 \(\d+ added in [^)]*\) stopped: context canceled`).FindStringSubmatch(out.String())
	if err == nil || m == nil {
		t.Fatalf("interrupted populate: %v\nstdout: %s\nstderr: %s", err, out.String(), errOut.String())
	}
	have, _ := strconv.Atoi(m[1])
	if have == 0 || have%20000 != 0 {
		t.Fatalf("committed %d invites: whole transactions of 20,000 expected", have)
	}

	want := have + 20000
	stdout, stderr, code := runHerald(t, env, "bench", "populate", "--invites", strconv.Itoa(want), "--bindings", "500", dir)
	if code != 0 || !regexp.MustCompile(`invites: `+strconv.Itoa(want)+`/`+strconv.Itoa(want)+` \(20000 added in .*\) done\nbindings: 500/500 \(500 added`).MatchString(stdout) {
		t.Fatalf("resumed populate: %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	db, err := bolt.Open(filepath.Join(dir, "herald.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket([]byte("invites")).Stats().KeyN; n != want {
			t.Errorf("%d invites stored, want %d", n, want)
		}
		counted := 0
		tx.Bucket([]byte("invites_count")).ForEach(func(k, v []byte) error {
			if bytes.HasPrefix(k, []byte("state\x00")) && len(v) == 8 {
				counted += int(uint64(v[0])<<56 | uint64(v[1])<<48 | uint64(v[2])<<40 | uint64(v[3])<<32 | uint64(v[4])<<24 | uint64(v[5])<<16 | uint64(v[6])<<8 | uint64(v[7]))
			}
			return nil
		})
		if counted != want {
			t.Errorf("the state counters add up to %d, want %d", counted, want)
		}
		return nil
	})
}
