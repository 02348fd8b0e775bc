package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herald-im/herald/store"
)

// TestBinaryCleanStopMarker: the built binary leaves the clean-shutdown
// marker on SIGINT and none on kill -9, removes it while it runs, and a page
// overwritten in place after a clean stop (same file, same inode) is still
// refused at the next start with the damaged-database line.
func TestBinaryCleanStopMarker(t *testing.T) {
	// bbolt: the clean-shutdown marker sits beside the bbolt file; PostgreSQL recovers itself.
	h, _, _, _ := newBoltBinary(t, "", "")
	t.Cleanup(func() {
		if h.cmd != nil {
			h.kill(t)
		}
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	data := filepath.Join(filepath.Dir(h.config), "data")
	dbPath := filepath.Join(data, store.FileName)
	marker := filepath.Join(data, store.CleanName)
	exists := func() bool {
		_, err := os.Stat(marker)
		return err == nil
	}

	h.start(t)
	if exists() {
		t.Fatal("marker present while Herald runs")
	}
	h.stop(t)
	if !exists() {
		t.Fatal("a clean stop left no marker")
	}
	h.start(t) // trusts the marker, removes it
	if exists() {
		t.Fatal("marker kept after start")
	}
	h.kill(t)
	if exists() {
		t.Fatal("kill -9 left a marker")
	}
	h.start(t) // full checks after the crash: the file is fine
	h.stop(t)
	if !exists() {
		t.Fatal("a clean stop left no marker")
	}

	root, pageSize := newestRoot(t, dbPath)
	overwritePage(t, dbPath, root, pageSize)
	for range 2 {
		code, _, stderr := h.runBin(t, "serve")
		if line := refusal(t, stderr); code != 1 || !strings.Contains(line, "damaged") || !strings.Contains(line, "restore") {
			t.Fatalf("serve after damage done while stopped: exit %d %q", code, line)
		}
	}
}
