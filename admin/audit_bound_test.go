package admin

import (
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/store"
)

// The audit log keeps entries for admin.audit_retention and at most
// admin.audit_max_entries of them, each of bounded size: nothing grows it
// without bound, and a restart counts what is there.
func TestAuditRetentionAndSizeBound(t *testing.T) {
	dir := t.TempDir()
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	defer db.Close()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Admin.AuditMaxEntries = 1000
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	newHandler := func() *Handler {
		h, err := New(Options{DB: db, Config: &cfg, Now: clock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := newHandler()
	stored := func() int {
		n := 0
		_ = db.View(func(tx *store.Tx) error { n = tx.Bolt.Bucket(bktAudit).Stats().KeyN; return nil })
		return n
	}

	// Fields are cut: an entry stays small whatever it is given.
	h.audit(strings.Repeat("w", 5000), "login", strings.Repeat("t", 5000), strings.Repeat("d", 50000), false)
	es, _ := h.Audit(1, 0)
	if len(es) != 1 || len(es[0].Who) > maxAuditWho || len(es[0].Target) > maxAuditTarget || len(es[0].Detail) > maxAuditDetail ||
		!strings.HasSuffix(es[0].Detail, "…") {
		t.Fatalf("entry not cut: who %d target %d detail %d bytes", len(es[0].Who), len(es[0].Target), len(es[0].Detail))
	}

	// The size bound: 1500 entries keep the newest 1000.
	for i := 0; i < 1500; i++ {
		now = now.Add(time.Second)
		h.audit("root", "revoke", "inv"+strconv.Itoa(i), "", true)
	}
	if n := stored(); n != 1000 {
		t.Fatalf("%d entries stored, want the bound 1000", n)
	}
	es, _ = h.Audit(1000, 999)
	if len(es) != 1 || es[0].Target != "inv500" {
		t.Fatalf("oldest kept: %+v, want inv500", es)
	}

	// The retention, at start-up and on the next write: 90 days later, only
	// what was written since is left.
	now = now.Add(90*24*time.Hour + time.Second)
	h = newHandler()
	if n := stored(); n != 0 {
		t.Fatalf("%d entries older than admin.audit_retention after a restart", n)
	}
	h.audit("root", "login", "", "", true)
	now = now.Add(45 * 24 * time.Hour)
	h.audit("root", "login", "", "", true)
	now = now.Add(46 * 24 * time.Hour)
	if err := h.PruneAudit(); err != nil {
		t.Fatal(err)
	}
	if n := stored(); n != 1 {
		t.Fatalf("%d entries after the first passed the retention, want 1", n)
	}
}
