package invites

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

type nopSender struct{}

func (nopSender) Send(context.Context, string, []string, []byte) error { return nil }

// pgReplica is a storage service on its own pool of the shared database,
// with an outbox and the identity service (bindings and bind hooks).
func pgReplica(t *testing.T, dsn string, clk *testClock) *Service {
	t.Helper()
	db := storetest.OpenPostgres(t, dsn)
	s := storageService(t, db, clk.Now)
	q, err := mailer.Open(db, mailer.Options{Sender: nopSender{}, From: "herald@id.example.org"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.New(db, identity.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	s.opts.Mailer, s.opts.Identity = q, id
	return s
}

// count runs a count(*) query on s's pool.
func count(t *testing.T, s *Service, q string, args ...any) int {
	t.Helper()
	var n int
	if err := s.db.PG().Pool().QueryRow(t.Context(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitAdvisoryWaiter waits until a transaction waits for an advisory lock
// (the address lock of store-invite and the bind hook).
func waitAdvisoryWaiter(t *testing.T, s *Service) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for count(t, s, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no transaction waits for the address lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Two replicas storing the same invite at once, each with its mail, at READ
// COMMITTED, end with one invite and one mail in the outbox (the losers'
// transactions find the winner's invite and write nothing).
func TestReplicasStoreOneInviteAndOneMail(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	replicas := []*Service{pgReplica(t, dsn, clk), pgReplica(t, dsn, clk)}
	const perReplica = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[uint64]int{}
	queued := 0
	for r, s := range replicas {
		for g := range perReplica {
			wg.Go(func() {
				inv := testInvite(0, clk.Now())
				inv.Token = fmt.Sprintf("tok-%d-%d", r, g)
				mail, err := s.opts.Mailer.Prepare(mailer.Message{To: inv.Address, Subject: "invite", Text: "hello", Kind: "invite"})
				if err != nil {
					t.Error(err)
					return
				}
				var res *Invite
				var q bool
				if err := s.commitStore(func(tx *store.Tx) (err error) {
					res, q, err = s.storeTx(tx, inv, mail, nil, clk.Now())
					return err
				}); err != nil {
					t.Errorf("store-invite on a replica: %v", err)
					return
				}
				mu.Lock()
				ids[res.ID]++
				if q {
					queued++
				}
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	if len(ids) != 1 || queued != 1 {
		t.Fatalf("replicas answered with invites %v and queued %d mails, want one of each", ids, queued)
	}
	s := replicas[0]
	if n := count(t, s, `SELECT count(*) FROM invites WHERE address = 'user0@example.org'`); n != 1 {
		t.Fatalf("%d invites stored, want 1", n)
	}
	if n := count(t, s, `SELECT count(*) FROM queue_records WHERE queue = 'outbox'`); n != 1 {
		t.Fatalf("%d mails in the outbox, want 1", n)
	}
	for id := range ids {
		if n := count(t, s, `SELECT count(*) FROM outbox_ref WHERE ref = $1`, fmt.Sprintf("invite:%d", id)); n != 1 {
			t.Fatalf("%d outbox entries for invite %d, want 1", n, id)
		}
		if n := count(t, s, `SELECT count(*) FROM invite_dedup WHERE invite_id = $1`, int64(id)); n != 1 {
			t.Fatalf("de-duplication entries for invite %d: %d, want 1", id, n)
		}
	}
}

// A bind that starts while a store-invite of the same address is between
// its checks and its commit waits for it (the address lock), and then
// resolves the new invite even though its own snapshot was taken before the
// invite was committed: the bind hook sees it is missing an invite and the
// bind runs again with a new snapshot. The invite is never left pending for
// a bound address.
func TestBindDuringStoreInviteResolvesIt(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	store1, binder := pgReplica(t, dsn, clk), pgReplica(t, dsn, clk)
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed test does not leave a transaction blocked
	store1.opts.StoreTxHook = func() error {
		close(inside)
		<-release
		return nil
	}
	inv := testInvite(0, clk.Now())
	stored := make(chan error, 1)
	var res *Invite
	go func() {
		stored <- store1.commitStore(func(tx *store.Tx) (err error) {
			res, _, err = store1.storeTx(tx, inv, nil, nil, clk.Now())
			return err
		})
	}()
	<-inside

	// The bind hook: the address lock, then the pending invites, as
	// Deliveries.resolve does (without queueing a delivery).
	var mu sync.Mutex
	var seen [][]uint64
	runs := 0
	binder.opts.Identity.OnBind(func(tx *store.Tx, b identity.Binding) error {
		mu.Lock()
		runs++
		mu.Unlock()
		if err := binder.lockAddress(tx, b.Medium, b.Address); err != nil {
			return err
		}
		pending, err := binder.PendingFor(tx, b.Medium, b.Address)
		var ids []uint64
		for _, p := range pending {
			ids = append(ids, p.ID)
		}
		mu.Lock()
		seen = append(seen, ids)
		mu.Unlock()
		return err
	})
	bound := make(chan error, 1)
	go func() {
		bound <- binder.db.Update(func(tx *store.Tx) error {
			return binder.opts.Identity.PutBinding(tx, identity.Binding{Medium: "email", Address: inv.Address, MXID: "@user0:hs2.test"})
		})
	}()
	waitAdvisoryWaiter(t, binder)
	unblock()
	if err := <-stored; err != nil {
		t.Fatalf("store-invite: %v", err)
	}
	if err := <-bound; err != nil {
		t.Fatalf("bind: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || len(seen[0]) != 1 || seen[0][0] != res.ID {
		t.Fatalf("the bind saw pending invites %v, want [[%d]]", seen, res.ID)
	}
	if runs < 2 {
		t.Fatalf("the bind hook ran %d times: its first snapshot predates the invite, it should have been run again", runs)
	}
}

// A store-invite that starts while a bind of the same address is in its
// hook waits for the bind to commit and is then refused: the address is
// bound (M_THREEPID_IN_USE), and nothing of it is stored.
func TestStoreInviteDuringBindIsRefused(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	storer, binder := pgReplica(t, dsn, clk), pgReplica(t, dsn, clk)
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed test does not leave a transaction blocked
	binder.opts.Identity.OnBind(func(tx *store.Tx, b identity.Binding) error {
		if err := binder.lockAddress(tx, b.Medium, b.Address); err != nil {
			return err
		}
		close(inside)
		<-release
		return nil
	})
	inv := testInvite(0, clk.Now())
	bound := make(chan error, 1)
	go func() {
		bound <- binder.db.Update(func(tx *store.Tx) error {
			return binder.opts.Identity.PutBinding(tx, identity.Binding{Medium: "email", Address: inv.Address, MXID: "@user0:hs2.test"})
		})
	}()
	<-inside
	stored := make(chan error, 1)
	go func() {
		stored <- storer.commitStore(func(tx *store.Tx) error {
			_, _, err := storer.storeTx(tx, inv, nil, nil, clk.Now())
			return err
		})
	}()
	waitAdvisoryWaiter(t, storer)
	unblock()
	if err := <-bound; err != nil {
		t.Fatalf("bind: %v", err)
	}
	err := <-stored
	if me, ok := matrix.AsError(err); !ok || me.Code != "M_THREEPID_IN_USE" {
		t.Fatalf("store-invite during a bind: %v, want M_THREEPID_IN_USE", err)
	}
	if n := count(t, storer, `SELECT count(*) FROM invites`); n != 0 {
		t.Fatalf("%d invites stored for a bound address", n)
	}
	if n := count(t, storer, `SELECT count(*) FROM invite_dedup`); n != 0 {
		t.Fatalf("%d de-duplication entries left", n)
	}
}

// commitStore runs at READ COMMITTED on PostgreSQL.
func TestStoreInviteRunsReadCommitted(t *testing.T) {
	s := pgReplica(t, pgtest.DSN(t), newClock())
	var level string
	if err := s.commitStore(func(tx *store.Tx) error {
		return tx.PG.QueryRow(tx.Context(), `SHOW transaction_isolation`).Scan(&level)
	}); err != nil {
		t.Fatal(err)
	}
	if level != "read committed" {
		t.Fatalf("store-invite's transaction runs at %q", level)
	}
	if err := s.db.Commit(func(tx *store.Tx) error {
		return tx.PG.QueryRow(tx.Context(), `SHOW transaction_isolation`).Scan(&level)
	}); err != nil || level != "serializable" {
		t.Fatalf("Commit runs at %q (%v), want serializable", level, err)
	}
}

// A bind whose address check finds no second pool connection (every other
// one busy) does not wait for one until its transaction times out: it gives
// its own connection back and runs again, and commits once one is free.
func TestBindWithoutASecondConnectionRunsAgain(t *testing.T) {
	dsn := pgtest.DSN(t)
	clk := newClock()
	pg, err := pgstore.Open(t.Context(), pgstore.Options{DSN: dsn, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewPostgres(pg)
	t.Cleanup(func() { db.Close() })
	s := storageService(t, db, clk.Now)
	id, err := identity.New(db, identity.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	s.opts.Identity = id
	var runs atomic.Int32
	id.OnBind(func(tx *store.Tx, b identity.Binding) error {
		runs.Add(1)
		return s.lockAddress(tx, b.Medium, b.Address)
	})
	// Something else holds the pool's other connection.
	held, err := pg.Pool().Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			held.Release()
		}
	}()
	bound := make(chan error, 1)
	go func() {
		bound <- db.Update(func(tx *store.Tx) error {
			return id.PutBinding(tx, identity.Binding{Medium: "email", Address: "full@example.org", MXID: "@full:hs2.test"})
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runs.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the bind did not run again while the pool had no second connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	held.Release()
	released = true
	if err := <-bound; err != nil {
		t.Fatalf("bind: %v", err)
	}
}

// store-invite writes the new invite's de-duplication entry once, in the
// claim that reserves its id: the entry is older in the transaction (a
// lower command id) than the invite's row, so the invite's indexing did not
// write it again after the row.
func TestStoreInviteWritesItsDedupEntryOnce(t *testing.T) {
	clk := newClock()
	s := pgReplica(t, pgtest.DSN(t), clk)
	inv := testInvite(0, clk.Now())
	mail, err := s.opts.Mailer.Prepare(mailer.Message{To: inv.Address, Subject: "invite", Text: "hello", Kind: "invite"})
	if err != nil {
		t.Fatal(err)
	}
	var res *Invite
	if err := s.commitStore(func(tx *store.Tx) (err error) {
		res, _, err = s.storeTx(tx, inv, mail, nil, clk.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var sameTx, before bool
	if err := s.db.PG().Pool().QueryRow(t.Context(), `SELECT d.xmin = i.xmin, d.cmin::text::int < i.cmin::text::int
		FROM invite_dedup d JOIN invites i ON i.id = d.invite_id WHERE i.id = $1`, int64(res.ID)).Scan(&sameTx, &before); err != nil {
		t.Fatal(err)
	}
	if !sameTx || !before {
		t.Fatalf("the de-duplication entry was written by the invite's transaction: %v, before the invite's row: %v", sameTx, before)
	}
}
