package invites

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The storage conformance suite: what package invites stores (records,
// indexes, counters, sweeps, lists, opt-outs, vouches, the deliveries'
// indexes), written once against a *store.DB and run on bbolt and on
// PostgreSQL (storetest.Run), plus two PostgreSQL replicas storing at once.
// The ephemeral keys, the outbox and the bindings belong to other packages:
// the service here has none (storageService), so only what invites itself
// stores is exercised.

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testClock is a settable clock (times on whole microseconds, as
// PostgreSQL keeps them).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// storageService is a Service over db with its storage only: no identity,
// keys or mail (New requires them; the storage does not).
func storageService(t testing.TB, db *store.DB, now func() time.Time) *Service {
	t.Helper()
	cfg := config.Default()
	cfg.Invites.Retention = config.Duration(30 * 24 * time.Hour)
	st := newStorage(db)
	for _, part := range []string{partInvites, partUpstream, partDeliveries} {
		if err := st.open(db, part); err != nil {
			t.Fatal(err)
		}
	}
	return &Service{db: db, st: st, cfg: &cfg, opts: Options{Config: &cfg, Now: now, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
}

// testInvite is the nth invite of a small varied population: five
// addresses, three senders on two homeservers, three rooms (two with an
// alias).
func testInvite(n int, now time.Time) *Invite {
	senders := []string{"@alice:hs1.test", "@bob:hs1.test", "@carol:hs2.test"}
	sender := senders[n%3]
	inv := &Invite{
		Token: fmt.Sprintf("token-%d-%d", n, now.UnixNano()), Medium: "email", Address: fmt.Sprintf("user%d@example.org", n%5),
		RoomID: fmt.Sprintf("!room%d:hs1.test", n%3), Sender: sender, Homeserver: matrix.ServerName(sender),
		EphemeralPublic: fmt.Sprintf("eph-%d", n), EphemeralPrivate: "seed", PublicKey: "pk", KeyID: "ed25519:0",
		Created: now, ExpiresAt: now.Add(7 * 24 * time.Hour), Via: "v2",
	}
	if n%3 != 2 {
		inv.RoomAlias = fmt.Sprintf("#room%d:hs1.test", n%3)
	}
	return inv
}

func insertAll(t testing.TB, s *Service, invs ...*Invite) {
	t.Helper()
	if err := s.db.Update(func(tx *store.Tx) error {
		for _, inv := range invs {
			if err := s.InsertTx(tx, inv); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func idsOf(l []*Invite) []uint64 {
	out := make([]uint64, 0, len(l))
	for _, inv := range l {
		out = append(out, inv.ID)
	}
	return out
}

func update(t testing.TB, s *Service, id uint64, fn func(inv *Invite)) {
	t.Helper()
	if err := s.db.Update(func(tx *store.Tx) error {
		inv, err := s.GetTx(tx, id)
		if err != nil {
			return err
		}
		fn(inv)
		return s.Update(tx, inv)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestStorageRecordsAndIndexes(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		var has bool
		_ = db.View(func(tx *store.Tx) error { has = s.HasData(tx); return nil })
		if has {
			t.Fatal("HasData on an empty database")
		}
		var invs []*Invite
		for i := range 10 {
			invs = append(invs, testInvite(i, clk.Now()))
		}
		invs[3].Extra = map[string]json.RawMessage{"x.custom": json.RawMessage(`{"a":[1,2]}`)}
		insertAll(t, s, invs...)
		for i := 1; i < len(invs); i++ {
			if invs[i].ID <= invs[i-1].ID {
				t.Fatalf("ids not increasing: %d after %d", invs[i].ID, invs[i-1].ID)
			}
		}
		// The record comes back as written.
		for _, want := range invs {
			got, err := s.Get(want.ID)
			if err != nil {
				t.Fatal(err)
			}
			wj, _ := json.Marshal(want)
			gj, _ := json.Marshal(got)
			if string(wj) != string(gj) {
				t.Fatalf("invite %d read back as\n%s\nwant\n%s", want.ID, gj, wj)
			}
			if byTok, err := s.ByToken(want.Token); err != nil || byTok.ID != want.ID {
				t.Fatalf("ByToken(%d) = %v, %v", want.ID, byTok, err)
			}
		}
		if _, err := s.ByToken("no-such-token"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ByToken of an unknown token: %v", err)
		}
		if _, err := s.Get(99999); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of an unknown id: %v", err)
		}
		_ = db.View(func(tx *store.Tx) error { has = s.HasData(tx); return nil })
		if !has {
			t.Fatal("HasData false with invites stored")
		}

		// Address index, normalised, oldest first.
		var forAddr, pendingFor []*Invite
		if err := db.View(func(tx *store.Tx) (err error) {
			if forAddr, err = s.ForAddress(tx, "email", "USER1@example.org"); err != nil {
				return err
			}
			pendingFor, err = s.PendingFor(tx, "email", "user1@example.org")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if want := []uint64{invs[1].ID, invs[6].ID}; !reflect.DeepEqual(idsOf(forAddr), want) || !reflect.DeepEqual(idsOf(pendingFor), want) {
			t.Fatalf("ForAddress = %v, PendingFor = %v, want %v", idsOf(forAddr), idsOf(pendingFor), want)
		}

		// De-duplication: the pending invite of the tuple, until it is not pending.
		dup := func(inv *Invite) uint64 {
			var d *Invite
			if err := db.View(func(tx *store.Tx) (err error) {
				d, err = s.pendingDuplicate(tx, inv.Sender, inv.RoomID, inv.Medium, inv.Address)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if d == nil {
				return 0
			}
			return d.ID
		}
		if got := dup(invs[4]); got != invs[4].ID {
			t.Fatalf("pendingDuplicate = %d, want %d", got, invs[4].ID)
		}
		update(t, s, invs[4].ID, func(inv *Invite) { inv.State = StateRevoked })
		if got := dup(invs[4]); got != 0 {
			t.Fatalf("pendingDuplicate of a revoked invite = %d", got)
		}
		if got, _ := s.Get(invs[4].ID); got.State != StateRevoked || !got.StateChanged.Equal(clk.Now()) {
			t.Fatalf("revoked invite: %+v", got)
		}

		// EachInState, oldest first.
		var revoked, pending []uint64
		if err := db.View(func(tx *store.Tx) error {
			if err := s.EachInState(tx, StateRevoked, func(inv *Invite) error { revoked = append(revoked, inv.ID); return nil }); err != nil {
				return err
			}
			return s.EachInState(tx, StatePending, func(inv *Invite) error { pending = append(pending, inv.ID); return nil })
		}); err != nil {
			t.Fatal(err)
		}
		if len(revoked) != 1 || revoked[0] != invs[4].ID || len(pending) != 9 || !slices.IsSorted(pending) {
			t.Fatalf("EachInState: revoked %v, pending %v", revoked, pending)
		}

		// Delete: the record and every index entry go.
		if err := db.Update(func(tx *store.Tx) error { return s.Delete(tx, invs[1].ID) }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(invs[1].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted invite still read: %v", err)
		}
		if _, err := s.ByToken(invs[1].Token); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted invite's token still found: %v", err)
		}
		if got := dup(invs[1]); got != 0 {
			t.Fatalf("deleted invite still de-duplicates: %d", got)
		}
		_ = db.View(func(tx *store.Tx) (err error) {
			forAddr, err = s.ForAddress(tx, "email", "user1@example.org")
			return err
		})
		if !reflect.DeepEqual(idsOf(forAddr), []uint64{invs[6].ID}) {
			t.Fatalf("ForAddress after delete = %v", idsOf(forAddr))
		}
		c, err := s.Counts()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{StatePending: 8, StateRevoked: 1, StateResolved: 0, StateExpired: 0, StateDeclined: 0}; !reflect.DeepEqual(c, want) {
			t.Fatalf("Counts = %v, want %v", c, want)
		}

		// ImportPending refuses a token already held.
		var ok bool
		if err := db.Update(func(tx *store.Tx) (err error) {
			ok, err = s.ImportPending(tx, testInvite(20, clk.Now()).withToken(invs[2].Token))
			return err
		}); err != nil || ok {
			t.Fatalf("ImportPending of a held token: %v, %v", ok, err)
		}
	})
}

func (inv *Invite) withToken(tok string) *Invite { inv.Token = tok; return inv }

func TestStorageCounters(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		var invs []*Invite
		for i := range 6 {
			invs = append(invs, testInvite(i, clk.Now()))
		}
		insertAll(t, s, invs...)
		clk.Add(24 * time.Hour)
		insertAll(t, s, testInvite(6, clk.Now()), testInvite(7, clk.Now()))
		update(t, s, invs[0].ID, func(inv *Invite) { inv.State, inv.ResolvedMXID = StateResolved, "@x:hs1.test" })
		update(t, s, invs[1].ID, func(inv *Invite) { inv.State = StateDeclined })
		update(t, s, invs[1].ID, func(inv *Invite) { inv.State = StatePending }) // undo
		update(t, s, invs[2].ID, func(inv *Invite) { inv.State = StateRevoked })
		check := func(when string) {
			t.Helper()
			c, err := s.Counts()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{StatePending: 6, StateResolved: 1, StateRevoked: 1, StateExpired: 0, StateDeclined: 0}; !reflect.DeepEqual(c, want) {
				t.Fatalf("%s: Counts = %v, want %v", when, c, want)
			}
			if n, err := s.PendingCount(); err != nil || n != 6 {
				t.Fatalf("%s: PendingCount = %d, %v", when, n, err)
			}
			days, err := s.PerDay(clk.Now(), 3)
			if err != nil {
				t.Fatal(err)
			}
			got := [][2]int{}
			for _, d := range days {
				got = append(got, [2]int{d.Created, d.Resolved})
			}
			if want := [][2]int{{0, 0}, {6, 0}, {2, 1}}; !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: PerDay = %v, want %v", when, got, want)
			}
		}
		check("before folding")
		if err := s.FoldCounts(t.Context()); err != nil {
			t.Fatal(err)
		}
		check("after folding")
		update(t, s, invs[3].ID, func(inv *Invite) { inv.State = StateExpired })
		update(t, s, invs[3].ID, func(inv *Invite) { inv.State = StatePending })
		check("after folding and more changes")
	})
}

func TestStorageSweeps(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		// More than one sweep batch expiring in an hour, a few later, one never.
		var soon []*Invite
		for i := range sweepBatch + 20 {
			inv := testInvite(i, clk.Now())
			inv.ExpiresAt = clk.Now().Add(time.Hour + time.Duration(i)*time.Microsecond)
			soon = append(soon, inv)
		}
		later := testInvite(1000, clk.Now())
		later.ExpiresAt = clk.Now().Add(3 * time.Hour)
		never := testInvite(1001, clk.Now())
		never.ExpiresAt = time.Time{}
		insertAll(t, s, append(soon, later, never)...)

		if n, err := s.ExpireDue(); err != nil || n != 0 {
			t.Fatalf("ExpireDue before any expiry = %d, %v", n, err)
		}
		clk.Add(2 * time.Hour)
		if n, err := s.ExpireDue(); err != nil || n != len(soon) {
			t.Fatalf("ExpireDue = %d, %v, want %d", n, err, len(soon))
		}
		if n, err := s.ExpireDue(); err != nil || n != 0 {
			t.Fatalf("second ExpireDue = %d, %v", n, err)
		}
		got, _ := s.Get(soon[7].ID)
		if got.State != StateExpired || !got.StateChanged.Equal(soon[7].ExpiresAt) {
			t.Fatalf("expired invite: state %s changed %v, want expired at %v", got.State, got.StateChanged, soon[7].ExpiresAt)
		}
		if got, _ := s.Get(later.ID); got.State != StatePending {
			t.Fatalf("invite expiring later: %s", got.State)
		}
		if c, _ := s.Counts(); c[StateExpired] != len(soon) || c[StatePending] != 2 {
			t.Fatalf("Counts after expiry: %v", c)
		}
		// One-pass methods for the wiring's periodic jobs.
		clk.Add(2 * time.Hour)
		if err := s.ExpireSweep(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Get(later.ID); got.State != StateExpired {
			t.Fatalf("ExpireSweep left %s", got.State)
		}

		// Erasure after retention (30 days, storageService), oldest first,
		// across batches; the pending invite without expiry keeps its token.
		if n, err := s.EraseSecrets(); err != nil || n != 0 {
			t.Fatalf("EraseSecrets before retention = %d, %v", n, err)
		}
		clk.Add(31 * 24 * time.Hour)
		if n, err := s.EraseSecrets(); err != nil || n != len(soon)+1 {
			t.Fatalf("EraseSecrets = %d, %v, want %d", n, err, len(soon)+1)
		}
		if err := s.EraseSweep(t.Context()); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get(soon[3].ID)
		if got.Token != "" || got.EphemeralPrivate != "" || got.State != StateExpired || got.Address != soon[3].Address {
			t.Fatalf("erased invite: %+v", got)
		}
		if _, err := s.ByToken(soon[3].Token); !errors.Is(err, ErrNotFound) {
			t.Fatalf("erased token still found: %v", err)
		}
		if got, _ := s.ByToken(never.Token); got == nil || got.ID != never.ID {
			t.Fatal("the pending invite lost its token")
		}
	})
}

func TestStorageLists(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		var all []*Invite
		for i := range 40 {
			inv := testInvite(i, clk.Now())
			if i%7 == 0 {
				inv.ExpiresAt = clk.Now().Add(time.Hour) // past expiry below, not swept
			}
			all = append(all, inv)
			clk.Add(time.Minute)
		}
		insertAll(t, s, all...)
		for i, inv := range all {
			switch i % 5 {
			case 1:
				update(t, s, inv.ID, func(x *Invite) { x.State, x.ResolvedMXID = StateResolved, "@u:hs2.test" })
			case 2:
				update(t, s, inv.ID, func(x *Invite) { x.State = StateRevoked })
			}
		}
		// The reference: every invite as stored, newest first.
		var stored []*Invite
		for i := len(all) - 1; i >= 0; i-- {
			inv, err := s.Get(all[i].ID)
			if err != nil {
				t.Fatal(err)
			}
			stored = append(stored, inv)
		}
		reference := func(f Filter) ([]uint64, int) {
			if f.Limit <= 0 {
				f.Limit = 50
			}
			f.Address = normalize("email", f.Address)
			var out []uint64
			n := 0
			for _, inv := range stored {
				if !f.match(inv) {
					continue
				}
				if n >= f.Offset && len(out) < f.Limit {
					out = append(out, inv.ID)
				}
				n++
			}
			return out, n
		}
		mid := all[20].ID
		for _, f := range []Filter{
			{}, {Limit: 7}, {Limit: 7, Offset: 9}, {Before: mid, Limit: 5},
			{State: StatePending}, {State: StateRevoked, Limit: 3, Offset: 2}, {State: StateResolved, Before: mid},
			{Sender: "@bob:hs1.test"}, {Sender: "@bob:hs1.test", State: StatePending},
			{RoomID: "!room2:hs1.test", Limit: 4}, {RoomAlias: "#room0:hs1.test"}, {Homeserver: "hs2.test", Offset: 3},
			{Address: "User3@Example.org"}, {Address: "user3@example.org", State: StateResolved},
			{Since: all[10].Created, Until: all[30].Created}, {Sender: "@nobody:hs1.test"},
		} {
			got, total, err := s.List(f)
			if err != nil {
				t.Fatal(err)
			}
			want, n := reference(f)
			if !slices.Equal(idsOf(got), want) {
				t.Errorf("List(%+v) = %v, want %v", f, idsOf(got), want)
			}
			if total != -1 && total != n {
				t.Errorf("List(%+v) total = %d, want %d", f, total, n)
			}
			if _, exact := f.source(); exact && f.Address == "" && total != n {
				t.Errorf("List(%+v) total = %d, want exactly %d", f, total, n)
			}
		}

		// Displayed states: past expiry but not swept shows as expired.
		clk.Add(2 * time.Hour)
		now := clk.Now()
		counts, err := s.DisplayCounts(now, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{}
		for _, inv := range stored {
			want[s.displayState(inv, now, false)]++
		}
		for _, st := range DisplayStates {
			if counts[st] != want[st] {
				t.Errorf("DisplayCounts[%s] = %d, want %d (%v)", st, counts[st], want[st], counts)
			}
		}
		for _, st := range []string{StatePending, StateExpired, StateRevoked} {
			l, err := s.ListDisplayed(Filter{Limit: 100}, st, now, nil)
			if err != nil {
				t.Fatal(err)
			}
			var ref []uint64
			for _, inv := range stored {
				if s.displayState(inv, now, false) == st {
					ref = append(ref, inv.ID)
				}
			}
			if !slices.Equal(idsOf(l), ref) {
				t.Errorf("ListDisplayed(%s) = %v, want %v", st, idsOf(l), ref)
			}
		}
	})
}

func TestStorageOptOutsAndVouches(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		a, b := testInvite(0, clk.Now()), testInvite(1, clk.Now())
		insertAll(t, s, a, b)
		optedOut := func(address, sender string) (one, any bool) {
			_ = db.View(func(tx *store.Tx) error {
				one = s.OptedOut(tx, address, sender)
				any, _ = s.st.anyOptOut(tx, normalize("email", address))
				return nil
			})
			return one, any
		}
		if one, any := optedOut(a.Address, a.Sender); one || any {
			t.Fatal("opted out before any opt-out")
		}
		if _, err := s.SetOptOut(a.Token, false, true); err != nil {
			t.Fatal(err)
		}
		if one, any := optedOut(a.Address, a.Sender); !one || !any {
			t.Fatal("opt-out from the sender not seen")
		}
		if one, _ := optedOut(a.Address, "@other:hs1.test"); one {
			t.Fatal("opt-out from one sender applies to another")
		}
		if _, err := s.SetOptOut(a.Token, true, true); err != nil {
			t.Fatal(err)
		}
		if one, _ := optedOut(a.Address, "@other:hs1.test"); !one {
			t.Fatal("opt-out from anyone not seen")
		}
		// store-invite's own check (storeTx): queued, then sent.
		var refused bool
		if err := db.View(func(tx *store.Tx) error {
			if err := s.queueOptedOut(tx, a.Address, "@z:hs1.test", &refused); err != nil {
				return err
			}
			return tx.Flush()
		}); err != nil || !refused {
			t.Fatalf("store-invite's opt-out check = %v, %v", refused, err)
		}
		for _, anyone := range []bool{false, true} {
			if _, err := s.SetOptOut(a.Token, anyone, false); err != nil {
				t.Fatal(err)
			}
		}
		if one, any := optedOut(a.Address, a.Sender); one || any {
			t.Fatal("opt-outs still seen after undoing them")
		}

		// Vouches and their resolve times, earliest first.
		if err := db.Update(func(tx *store.Tx) error {
			for i, inv := range []*Invite{a, b} {
				raw, _ := json.Marshal(Vouch{Upstream: "https://up.test", MXID: "@v:hs2.test", At: clk.Now()})
				if err := s.st.putVouch(tx, inv.ID, raw); err != nil {
					return err
				}
				if err := s.st.addVouchDue(tx, clk.Now().Add(time.Duration(2-i)*time.Second), inv.ID); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if v, err := s.VouchFor(a.ID); err != nil || v == nil || v.MXID != "@v:hs2.test" {
			t.Fatalf("VouchFor = %+v, %v", v, err)
		}
		for _, want := range []uint64{b.ID, a.ID} {
			if err := db.Update(func(tx *store.Tx) error {
				due, id, ok, err := s.st.firstVouchDue(tx)
				if err != nil || !ok || id != want {
					return fmt.Errorf("firstVouchDue = %v %d %v %v, want %d", due, id, ok, err, want)
				}
				return s.st.deleteVouchDue(tx, due, id)
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.View(func(tx *store.Tx) error {
			if _, _, ok, err := s.st.firstVouchDue(tx); ok || err != nil {
				return fmt.Errorf("resolve times left: %v %v", ok, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// Deleting the invite deletes its vouch.
		if err := db.Update(func(tx *store.Tx) error { return s.Delete(tx, a.ID) }); err != nil {
			t.Fatal(err)
		}
		if v, err := s.VouchFor(a.ID); err != nil || v != nil {
			t.Fatalf("vouch of a deleted invite: %+v, %v", v, err)
		}
	})
}

// deliveryBackend is the onbind queue's backend on db.
func deliveryBackend(t testing.TB, db *store.DB) queue.Backend {
	t.Helper()
	var be queue.Backend
	var err error
	if db.Backend() == store.BackendPostgres {
		be, err = pgqueue.New(db.PG(), deliveryQueue)
	} else {
		be, err = queue.OpenBolt(db.Bolt(), deliveryQueue)
	}
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestStorageDeliveryIndexes(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		be := deliveryBackend(t, db)
		s.dq = be
		a, b, c := testInvite(0, clk.Now()), testInvite(1, clk.Now()), testInvite(2, clk.Now())
		insertAll(t, s, a, b, c)
		for _, inv := range []*Invite{a, b, c} {
			update(t, s, inv.ID, func(x *Invite) { x.State, x.ResolvedMXID = StateResolved, "@u:hs2.test" })
		}
		enqueue := func(address string, invites ...uint64) Delivery {
			t.Helper()
			md, _ := json.Marshal(deliveryMeta{Server: "hs2.test", Medium: "email", Address: address, MXID: "@u:hs2.test", InviteIDs: invites})
			r := &queue.Record{Meta: md, Created: clk.Now(), NextAttempt: clk.Now(), RetryFrom: clk.Now()}
			if err := db.Update(func(tx *store.Tx) error {
				if err := be.Enqueue(tx, r); err != nil {
					return err
				}
				return s.st.indexDelivery(tx, toDelivery(r))
			}); err != nil {
				t.Fatal(err)
			}
			return toDelivery(r)
		}
		d1 := enqueue("user0@example.org", a.ID, b.ID)
		d2 := enqueue("user0@example.org", a.ID)
		d3 := enqueue("user2@example.org", c.ID)
		active := func(id uint64) (delivered, pending, allFailed bool) {
			if err := db.View(func(tx *store.Tx) (err error) {
				delivered, pending, err = s.deliveryActive(tx, id)
				allFailed = s.allDeliveriesFailed(tx, id)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return
		}
		if d, p, f := active(a.ID); d || !p || f {
			t.Fatalf("invite with pending deliveries: delivered %v pending %v all failed %v", d, p, f)
		}
		setState := func(id uint64, st queue.State) {
			t.Helper()
			if err := db.Update(func(tx *store.Tx) error {
				_, err := be.Update(tx, id, func(r *queue.Record) error { r.State = st; return nil })
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		setState(d1.ID, queue.Failed)
		setState(d2.ID, queue.Failed)
		setState(d3.ID, queue.Done)
		if d, p, f := active(a.ID); d || p || !f {
			t.Fatalf("invite whose deliveries failed: delivered %v pending %v all failed %v", d, p, f)
		}
		if d, p, f := active(c.ID); !d || p || f {
			t.Fatalf("delivered invite: delivered %v pending %v all failed %v", d, p, f)
		}
		var of, to []uint64
		if err := db.View(func(tx *store.Tx) (err error) {
			if of, err = s.st.deliveriesOf(tx, a.ID); err != nil {
				return err
			}
			to, err = s.st.deliveriesTo(tx, "email", "user0@example.org")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if want := []uint64{d1.ID, d2.ID}; !reflect.DeepEqual(of, want) || !reflect.DeepEqual(to, want) {
			t.Fatalf("deliveriesOf = %v, deliveriesTo = %v, want %v", of, to, want)
		}
		// Revoking a resolved invite is refused once a delivery of it was accepted.
		if err := s.Revoke(c.ID, "test"); !errors.Is(err, ErrState) {
			t.Fatalf("Revoke of a delivered invite: %v", err)
		}
		if err := db.Update(func(tx *store.Tx) error { return s.st.unindexDelivery(tx, d1) }); err != nil {
			t.Fatal(err)
		}
		_ = db.View(func(tx *store.Tx) (err error) { of, err = s.st.deliveriesOf(tx, b.ID); return err })
		if len(of) != 0 {
			t.Fatalf("deliveriesOf after unindexing = %v", of)
		}
	})
}

// Two replicas storing the same invite at once (each request with its own
// token, as two homeserver requests would have) end with one invite: every
// request is answered with it. store-invite runs at READ COMMITTED on
// PostgreSQL (commitStore): the de-duplication entry's key does this.
func TestReplicasStoreOneInvite(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	replicas := []*Service{storageService(t, storetest.OpenPostgres(t, dsn), clk.Now), storageService(t, storetest.OpenPostgres(t, dsn), clk.Now)}
	const perReplica = 8
	var wg sync.WaitGroup
	results := make(chan uint64, 2*perReplica)
	errs := make(chan error, 2*perReplica)
	for r, s := range replicas {
		for g := range perReplica {
			wg.Go(func() {
				inv := testInvite(0, clk.Now())
				inv.Token = fmt.Sprintf("tok-%d-%d", r, g)
				var res *Invite
				err := s.commitStore(func(tx *store.Tx) (err error) {
					res, _, err = s.storeTx(tx, inv, nil, nil, clk.Now())
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				results <- res.ID
			})
		}
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Errorf("store-invite on a replica: %v", err)
	}
	ids := map[uint64]int{}
	for id := range results {
		ids[id]++
	}
	if len(ids) != 1 {
		t.Fatalf("replicas answered with invites %v, want one", ids)
	}
	for _, s := range replicas {
		var all []*Invite
		_ = s.db.View(func(tx *store.Tx) (err error) { all, err = s.ForAddress(tx, "email", "user0@example.org"); return err })
		if len(all) != 1 {
			t.Fatalf("%d invites stored for the address, want 1", len(all))
		}
		if c, _ := s.Counts(); c[StatePending] != 1 {
			t.Fatalf("pending count %d, want 1", c[StatePending])
		}
	}
}

// Two replicas storing invites for different addresses at once store them
// all, and the counters agree.
func TestReplicasStoreManyInvites(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	replicas := []*Service{storageService(t, storetest.OpenPostgres(t, dsn), clk.Now), storageService(t, storetest.OpenPostgres(t, dsn), clk.Now)}
	const perReplica = 20
	var wg sync.WaitGroup
	var failed atomic.Int64
	for r, s := range replicas {
		wg.Go(func() {
			for i := range perReplica {
				inv := testInvite(r*perReplica+i, clk.Now())
				inv.Address = fmt.Sprintf("many%d-%d@example.org", r, i)
				if err := s.commitStore(func(tx *store.Tx) error {
					_, _, err := s.storeTx(tx, inv, nil, nil, clk.Now())
					return err
				}); err != nil {
					t.Errorf("store-invite: %v", err)
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.FailNow()
	}
	if err := replicas[1].FoldCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c, _ := replicas[0].Counts(); c[StatePending] != 2*perReplica {
		t.Fatalf("pending count %d, want %d", c[StatePending], 2*perReplica)
	}
	l, total, err := replicas[0].List(Filter{Limit: 100})
	if err != nil || total != 2*perReplica || len(l) != 2*perReplica {
		t.Fatalf("List: %d invites, total %d, %v", len(l), total, err)
	}
}

// A store-invite transaction that keeps failing on serialization conflicts
// is run again by store.DB, and when the retries run out the client is told
// to come back (429 M_LIMIT_EXCEEDED with retry_after_ms), never a 500.
func TestStoreInviteContentionIsBusy(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	s := storageService(t, storetest.OpenPostgres(t, dsn), clk.Now)
	var runs atomic.Int64
	s.opts.StoreTxHook = func() error {
		runs.Add(1)
		return &pgconn.PgError{Code: "40001", Message: "could not serialize access (injected)"}
	}
	err := s.commitStore(func(tx *store.Tx) error {
		_, _, err := s.storeTx(tx, testInvite(0, clk.Now()), nil, nil, clk.Now())
		return err
	})
	if !errors.Is(err, pgstore.ErrContention) {
		t.Fatalf("err = %v, want pgstore.ErrContention", err)
	}
	if runs.Load() < 2 {
		t.Fatalf("the transaction ran %d times: not retried", runs.Load())
	}
	me, ok := matrix.AsError(busy(err))
	if !ok || me.Status != 429 || me.Code != "M_LIMIT_EXCEEDED" || me.Body()["retry_after_ms"] != busyRetryAfter.Milliseconds() {
		t.Fatalf("busy(%v) = %+v", err, busy(err))
	}
	if refusalReason(busy(err)) != "busy" {
		t.Fatalf("refusal reason %q", refusalReason(busy(err)))
	}
	if c, _ := s.Counts(); c[StatePending] != 0 {
		t.Fatalf("a rolled-back store-invite left %d invites", c[StatePending])
	}
}

// A populated bbolt database copied to PostgreSQL sums the same, and the
// service works on the copy.
func TestCopyStorageToPostgres(t *testing.T) {
	clk := newClock()
	src := storetest.Open(t, store.BackendBolt)
	s := storageService(t, src, clk.Now)
	be := deliveryBackend(t, src)
	s.dq = be
	var all []*Invite
	for i := range 2*store.CopyBatch + 30 {
		inv := testInvite(i, clk.Now())
		inv.Created = clk.Now().Add(time.Duration(i) * time.Second)
		all = append(all, inv)
	}
	insertAll(t, s, all...)
	update(t, s, all[1].ID, func(x *Invite) { x.State, x.ResolvedMXID = StateResolved, "@u:hs2.test" })
	update(t, s, all[2].ID, func(x *Invite) { x.State = StateRevoked })
	update(t, s, all[3].ID, func(x *Invite) { x.State = StateDeclined })
	if _, err := s.SetOptOut(all[4].Token, true, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetOptOut(all[5].Token, false, true); err != nil {
		t.Fatal(err)
	}
	md, _ := json.Marshal(deliveryMeta{Server: "hs2.test", Medium: "email", Address: all[1].Address, MXID: "@u:hs2.test", InviteIDs: []uint64{all[1].ID}})
	rec := &queue.Record{Meta: md, Created: clk.Now(), NextAttempt: clk.Now(), RetryFrom: clk.Now()}
	if err := src.Update(func(tx *store.Tx) error {
		raw, _ := json.Marshal(Vouch{Upstream: "https://up.test", MXID: "@v:hs2.test", At: clk.Now()})
		if err := s.st.putVouch(tx, all[6].ID, raw); err != nil {
			return err
		}
		if err := s.st.addVouchDue(tx, clk.Now().Add(time.Second), all[6].ID); err != nil {
			return err
		}
		if err := be.Enqueue(tx, rec); err != nil {
			return err
		}
		return s.st.indexDelivery(tx, toDelivery(rec))
	}); err != nil {
		t.Fatal(err)
	}

	dst := storetest.OpenPostgres(t, pgtest.DSN(t))
	// The onbind records first, with their ids, as queue.Copy does.
	if _, err := dst.PG().Pool().Exec(t.Context(), `INSERT INTO queue_records (id, queue, state, created, next_attempt, retry_from, meta)
		VALUES ($1, $2, 'pending', $3, $3, $3, $4)`, int64(rec.ID), deliveryQueue, clk.Now(), md); err != nil {
		t.Fatal(err)
	}
	var progress []int
	if err := CopyStorage(t.Context(), src, dst, func(n int) { progress = append(progress, n) }); err != nil {
		t.Fatal(err)
	}
	// progress is told each batch's count (at most store.CopyBatch), adding up to
	// every record copied.
	total := 0
	for _, n := range progress {
		if n <= 0 || n > store.CopyBatch {
			t.Errorf("progress %v: a batch of %d", progress, n)
		}
		total += n
	}
	if len(progress) < 3 || total != len(all)+2+2+1 {
		t.Errorf("progress %v adds up to %d, want %d", progress, total, len(all)+5)
	}
	want, err := SumStorage(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := SumStorage(t.Context(), dst)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sums differ:\nbbolt    %+v\npostgres %+v", want, got)
	}
	for _, ts := range want {
		if ts.Count == 0 {
			t.Errorf("nothing of %s in the populated database", ts.Table)
		}
	}

	// The service on the copy.
	c := storageService(t, dst, clk.Now)
	c.dq = deliveryBackend(t, dst)
	if got, err := c.ByToken(all[7].Token); err != nil || got.ID != all[7].ID {
		t.Fatalf("ByToken on the copy: %v, %v", got, err)
	}
	if counts, _ := c.Counts(); counts[StatePending] != len(all)-3 || counts[StateRevoked] != 1 {
		t.Fatalf("Counts on the copy: %v", counts)
	}
	if err := c.Revoke(all[1].ID, "test"); err != nil { // its delivery is pending, not yet accepted
		t.Fatalf("Revoke on the copy: %v", err)
	}
	var ids []uint64
	_ = dst.View(func(tx *store.Tx) (err error) { ids, err = c.st.deliveriesOf(tx, all[1].ID); return err })
	if !slices.Equal(ids, []uint64{rec.ID}) {
		t.Fatalf("deliveries of the copied invite: %v", ids)
	}
	next := testInvite(5000, clk.Now())
	insertAll(t, c, next)
	if next.ID <= all[len(all)-1].ID {
		t.Fatalf("new invite on the copy got id %d, not above the copied %d", next.ID, all[len(all)-1].ID)
	}
}

// store-invite's transaction on either backend: a repeat of a pending invite
// is answered with it; a pending invite past its expiry (not yet swept) or
// one imported without its ephemeral key does not de-duplicate, and the new
// invite takes over the de-duplication entry; an opt-out refuses and leaves
// nothing behind.
func TestStorageStoreTx(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		clk := newClock()
		s := storageService(t, db, clk.Now)
		store1 := func(inv *Invite) (*Invite, error) {
			var res *Invite
			err := db.Commit(func(tx *store.Tx) (err error) {
				res, _, err = s.storeTx(tx, inv, nil, nil, clk.Now())
				return err
			})
			return res, err
		}
		first := testInvite(0, clk.Now())
		first.ExpiresAt = clk.Now().Add(time.Hour)
		a, err := store1(first)
		if err != nil {
			t.Fatal(err)
		}
		again := testInvite(0, clk.Now())
		again.Token = "another-token"
		if b, err := store1(again); err != nil || b.ID != a.ID || b.Token != a.Token {
			t.Fatalf("repeat answered with %+v, %v; want invite %d", b, err, a.ID)
		}
		clk.Add(2 * time.Hour) // a is past its expiry, not swept
		c, err := store1(again)
		if err != nil || c.ID == a.ID || c.Token != "another-token" {
			t.Fatalf("after expiry: %+v, %v; want a new invite", c, err)
		}
		var dup *Invite
		_ = db.View(func(tx *store.Tx) (err error) {
			dup, err = s.pendingDuplicate(tx, again.Sender, again.RoomID, again.Medium, again.Address)
			return err
		})
		if dup == nil || dup.ID != c.ID {
			t.Fatalf("de-duplication entry names %v, want invite %d", dup, c.ID)
		}
		// An invite imported without its ephemeral key is not answered again.
		imp := testInvite(1, clk.Now())
		imp.EphemeralPublic, imp.EphemeralPrivate = "", ""
		if err := db.Update(func(tx *store.Tx) error { _, err := s.ImportPending(tx, imp); return err }); err != nil {
			t.Fatal(err)
		}
		rep := testInvite(1, clk.Now())
		rep.Token = "after-import"
		if d, err := store1(rep); err != nil || d.ID == imp.ID {
			t.Fatalf("repeat of an imported invite: %+v, %v; want a new invite", d, err)
		}
		// Opted out: refused, and no entry or invite is left.
		if _, err := s.SetOptOut(c.Token, true, true); err != nil {
			t.Fatal(err)
		}
		out := testInvite(5, clk.Now()) // same address as invite 0, another room
		out.Token = "opted-out"
		if _, err := store1(out); matrix.Errcode(err) != "M_FORBIDDEN" {
			t.Fatalf("store-invite to an opted-out address: %v", err)
		}
		var d *storageDump
		if err := db.View(func(tx *store.Tx) (err error) { d, err = s.st.dump(tx); return err }); err != nil {
			t.Fatal(err)
		}
		for _, r := range d.dedup {
			if r.sender == out.Sender && r.room == out.RoomID {
				t.Fatalf("a refused store-invite left a de-duplication entry: %+v", r)
			}
		}
		if _, err := s.ByToken("opted-out"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a refused store-invite left an invite: %v", err)
		}
	})
}

// Two replicas running the expiry sweep at once (as they would without the
// wiring's once-per-period lock) expire each invite once: the counts they
// report add up to the invites due, and the counters agree.
func TestReplicasExpireOnce(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	replicas := []*Service{storageService(t, storetest.OpenPostgres(t, dsn), clk.Now), storageService(t, storetest.OpenPostgres(t, dsn), clk.Now)}
	var due []*Invite
	for i := range sweepBatch + 100 {
		inv := testInvite(i, clk.Now())
		inv.Address = fmt.Sprintf("exp%d@example.org", i)
		inv.ExpiresAt = clk.Now().Add(time.Hour)
		due = append(due, inv)
	}
	insertAll(t, replicas[0], due...)
	clk.Add(2 * time.Hour)
	var wg sync.WaitGroup
	counts := make([]int, len(replicas))
	errs := make([]error, len(replicas))
	for i, s := range replicas {
		wg.Go(func() { counts[i], errs[i] = s.ExpireDue() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if counts[0]+counts[1] != len(due) {
		t.Fatalf("replicas expired %v invites, want %d in all", counts, len(due))
	}
	if c, _ := replicas[1].Counts(); c[StateExpired] != len(due) || c[StatePending] != 0 {
		t.Fatalf("Counts after both sweeps: %v", c)
	}
}
