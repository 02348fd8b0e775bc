package invites_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// sweepEnv is an invites.Service on its own database with a clock the test
// moves, and no background sweeper: the test alone runs the sweeps.
type sweepEnv struct {
	dir string
	db  *store.DB
	s   *invites.Service
	mu  sync.Mutex
	now time.Time
	cfg config.Config
}

func (e *sweepEnv) Now() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }

func (e *sweepEnv) Advance(d time.Duration) { e.mu.Lock(); e.now = e.now.Add(d); e.mu.Unlock() }

func newSweepEnv(t *testing.T, mutate func(*config.Config)) *sweepEnv {
	t.Helper()
	e := &sweepEnv{dir: t.TempDir(), now: time.Now().UTC(), cfg: config.Default()}
	if mutate != nil {
		mutate(&e.cfg)
	}
	e.open(t)
	return e
}

func (e *sweepEnv) open(t *testing.T) {
	t.Helper()
	bdb, err := store.Open(filepath.Join(e.dir, "data"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	t.Cleanup(func() { db.Close() })
	ring, err := keys.OpenRing(filepath.Join(e.dir, "keys"), "id.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(ring.List()) == 0 {
		if _, err := ring.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	id, err := identity.New(db, identity.Options{Now: e.Now, Ring: ring})
	if err != nil {
		t.Fatal(err)
	}
	eph, err := keys.OpenEphemeral(db, e.Now)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	s, err := invites.New(db, invites.Options{Config: &cfg, Identity: id, Ring: ring, Ephemeral: eph, Now: e.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.db, e.s = db, s
}

func (e *sweepEnv) reopen(t *testing.T) {
	t.Helper()
	e.db.Close()
	e.open(t)
}

// txid is the id of the last committed write transaction.
func txid(t *testing.T, db *store.DB) int {
	t.Helper()
	var id int
	db.View(func(tx *store.Tx) error { id = tx.Bolt.ID(); return nil })
	return id
}

// insertN stores n invites to distinct addresses in one transaction.
func insertN(t *testing.T, e *sweepEnv, n int, mk func(i int) *invites.Invite) {
	t.Helper()
	s := e.s
	if err := s.DB().Update(func(tx *store.Tx) error {
		for i := 0; i < n; i++ {
			if err := s.InsertTx(tx, mk(i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func wantCounts(t *testing.T, s *invites.Service, want map[string]int) {
	t.Helper()
	got, err := s.Counts()
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range invites.States {
		if got[st] != want[st] {
			t.Errorf("Counts()[%s] = %d, want %d (all: %v)", st, got[st], want[st], got)
		}
	}
}

// The sweeps find their work by seeking indexes and commit it in batches of
// at most 500 invites; the counters follow every state change and erasure.
func TestSweepsAndCountersAtScale(t *testing.T) {
	e := newSweepEnv(t, func(c *config.Config) {
		c.Invites.Expiry = config.Duration(time.Hour)
		c.Invites.Retention = config.Duration(24 * time.Hour)
	})
	s := e.s
	now := e.Now()
	const due, resolved, later = 1100, 300, 50
	insertN(t, e, due+resolved+later, func(i int) *invites.Invite {
		inv := &invites.Invite{Token: fmt.Sprint("tok", i), Medium: "email", Address: fmt.Sprintf("u%d@example.org", i),
			RoomID: "!r:hs.test", Sender: alice, Homeserver: "hs.test", EphemeralPrivate: "seed",
			Created: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}
		switch {
		case i >= due+resolved:
			inv.ExpiresAt = now.Add(time.Hour)
		case i >= due:
			inv.State, inv.ResolvedMXID = invites.StateResolved, "@u:hs.test"
			inv.StateChanged = now.Add(-90 * time.Minute)
		}
		return inv
	})
	wantCounts(t, s, map[string]int{invites.StatePending: due + later, invites.StateResolved: resolved})

	before := txid(t, s.DB())
	n, err := s.ExpireDue()
	if err != nil || n != due {
		t.Fatalf("ExpireDue = %d, %v; want %d", n, err, due)
	}
	// 500 + 500 + 100: three short transactions, not one long one.
	if got := txid(t, s.DB()) - before; got != 3 {
		t.Errorf("ExpireDue of %d invites took %d write transactions, want 3", due, got)
	}
	wantCounts(t, s, map[string]int{invites.StatePending: later, invites.StateExpired: due, invites.StateResolved: resolved})
	if n, _ := s.ExpireDue(); n != 0 {
		t.Errorf("second ExpireDue = %d", n)
	}

	// Nothing is past retention yet.
	if n, err := s.EraseSecrets(); err != nil || n != 0 {
		t.Fatalf("EraseSecrets before retention = %d, %v", n, err)
	}
	e.Advance(25 * time.Hour)
	before = txid(t, s.DB())
	if n, err := s.EraseSecrets(); err != nil || n != due+resolved {
		t.Fatalf("EraseSecrets = %d, %v; want %d", n, err, due+resolved)
	}
	if got := txid(t, s.DB()) - before; got != 3 {
		t.Errorf("EraseSecrets of %d invites took %d write transactions, want 3", due+resolved, got)
	}
	if n, _ := s.EraseSecrets(); n != 0 {
		t.Errorf("second EraseSecrets = %d", n)
	}
	inv, err := s.Get(1)
	if err != nil || inv.Token != "" || inv.EphemeralPrivate != "" || inv.State != invites.StateExpired {
		t.Errorf("invite 1 after the sweeps: %+v %v", inv, err)
	}
	// The later invites expired meanwhile (the clock moved a day).
	if n, _ := s.ExpireDue(); n != later {
		t.Errorf("ExpireDue after a day = %d, want %d", n, later)
	}
	wantCounts(t, s, map[string]int{invites.StateExpired: due + later, invites.StateResolved: resolved})

	// Erasure takes its invites out of the counters.
	if n, err := s.EraseAddress("u0@example.org"); err != nil || n != 1 {
		t.Fatalf("EraseAddress = %d, %v", n, err)
	}
	wantCounts(t, s, map[string]int{invites.StateExpired: due + later - 1, invites.StateResolved: resolved})

	days, err := s.PerDay(e.Now(), 3)
	if err != nil {
		t.Fatal(err)
	}
	created, res := 0, 0
	for _, d := range days {
		created += d.Created
		res += d.Resolved
	}
	if created != due+resolved+later-1 || res != resolved {
		t.Errorf("PerDay: %d created, %d resolved; want %d, %d (%+v)", created, res, due+resolved+later-1, resolved, days)
	}
}

// List walks an index from the newest, pages with Offset or Before, and
// tells the total when the counters or an index alone know it.
func TestListPagesByIndex(t *testing.T) {
	e := newSweepEnv(t, nil)
	s := e.s
	now := e.Now()
	insertN(t, e, 30, func(i int) *invites.Invite {
		inv := &invites.Invite{Token: fmt.Sprint("tok", i), Medium: "email", Address: fmt.Sprintf("u%d@example.org", i),
			RoomID: fmt.Sprint("!r", i%3, ":hs.test"), RoomAlias: fmt.Sprint("#r", i%3, ":hs.test"),
			Sender: alice, Homeserver: "hs.test", Created: now}
		if i%2 == 1 {
			inv.Sender = bob
			inv.Homeserver = "hs2.test"
			inv.State = invites.StateRevoked
		}
		return inv
	})
	ids := func(l []*invites.Invite) []uint64 {
		var out []uint64
		for _, inv := range l {
			out = append(out, inv.ID)
		}
		return out
	}
	for _, c := range []struct {
		f     invites.Filter
		want  []uint64
		total int
	}{
		{invites.Filter{Limit: 3}, []uint64{30, 29, 28}, 30},
		{invites.Filter{Limit: 3, Offset: 3}, []uint64{27, 26, 25}, 30},
		{invites.Filter{Limit: 3, Before: 25}, []uint64{24, 23, 22}, -1},
		{invites.Filter{State: invites.StateRevoked, Limit: 2}, []uint64{30, 28}, 15},
		{invites.Filter{Sender: bob, Limit: 2, Offset: 1}, []uint64{28, 26}, 15},
		{invites.Filter{Homeserver: "hs.test", Limit: 2}, []uint64{29, 27}, 15},
		{invites.Filter{RoomID: "!r0:hs.test", Limit: 2}, []uint64{28, 25}, 10},
		{invites.Filter{RoomAlias: "#r1:hs.test", State: invites.StatePending, Limit: 10}, []uint64{29, 23, 17, 11, 5}, -1},
		{invites.Filter{Address: "U7@example.org"}, []uint64{8}, 1}, // ids start at 1
		{invites.Filter{Sender: "@nobody:hs.test"}, nil, 0},
	} {
		l, total, err := s.List(c.f)
		if err != nil || fmt.Sprint(ids(l)) != fmt.Sprint(c.want) || total != c.total {
			t.Errorf("List(%+v) = %v, %d, %v; want %v, %d", c.f, ids(l), total, err, c.want, c.total)
		}
	}
}

// A data dir whose invites were written before the indexes existed gets
// them, and the counters, when Herald starts.
func TestIndexesBuiltForOlderDataDir(t *testing.T) {
	e := newSweepEnv(t, nil)
	s := e.s
	now := e.Now()
	insertN(t, e, 20, func(i int) *invites.Invite {
		inv := &invites.Invite{Token: fmt.Sprint("tok", i), Medium: "email", Address: fmt.Sprintf("u%d@example.org", i),
			RoomID: "!r:hs.test", Sender: alice, Homeserver: "hs.test", Created: now, ExpiresAt: now.Add(-time.Minute)}
		if i < 5 {
			inv.State = invites.StateDeclined
		}
		return inv
	})
	// What schema version 1 had: none of these buckets.
	if err := s.DB().Update(func(tx *store.Tx) error {
		for _, b := range []string{"invites_expiry", "invites_erase", "invites_by", "invites_count"} {
			if err := tx.Bolt.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.reopen(t)
	s = e.s
	wantCounts(t, s, map[string]int{invites.StatePending: 15, invites.StateDeclined: 5})
	if n, err := s.ExpireDue(); err != nil || n != 15 {
		t.Errorf("ExpireDue after the rebuild = %d, %v", n, err)
	}
	if l, total, _ := s.List(invites.Filter{Sender: alice, Limit: 1}); total != 20 || len(l) != 1 {
		t.Errorf("List by sender after the rebuild: %d, total %d", len(l), total)
	}
}

// The console's pending list pages through the pending invites in chunks,
// newest first, and its counts come from the counters and the pending walk.
func TestDisplayedPendingPages(t *testing.T) {
	e := newSweepEnv(t, nil)
	now := e.Now()
	insertN(t, e, 700, func(i int) *invites.Invite {
		inv := &invites.Invite{Token: fmt.Sprint("tok", i), Medium: "email", Address: fmt.Sprintf("u%d@example.org", i),
			RoomID: "!r:hs.test", Sender: alice, Homeserver: "hs.test", Created: now, ExpiresAt: now.Add(time.Hour)}
		if i%7 == 0 {
			inv.State = invites.StateRevoked
		}
		if i == 699 {
			inv.ExpiresAt = now.Add(-time.Minute) // due, not swept: shows as expired
		}
		return inv
	})
	l, err := e.s.ListDisplayed(invites.Filter{Limit: 3, Offset: 500}, invites.StatePending, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Pending ids, newest first: 699 (ids 1-700, i = id-1) is expired, every
	// seventh is revoked; the 501st pending one onwards.
	var want []uint64
	for id := uint64(699); id > 0 && len(want) < 503; id-- {
		if (id-1)%7 != 0 {
			want = append(want, id)
		}
	}
	if len(l) != 3 || l[0].ID != want[500] || l[2].ID != want[502] {
		t.Errorf("page: %v, want from %d", l, want[500])
	}
	counts, err := e.s.DisplayCounts(now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if counts[invites.StatePending] != 599 || counts[invites.StateExpired] != 1 || counts[invites.StateRevoked] != 100 {
		t.Errorf("DisplayCounts = %v", counts)
	}
}
