package pgqueue_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/queue/queuetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// deadline bounds every wait in these tests.
const deadline = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*deadline)
	t.Cleanup(cancel)
	return ctx
}

// migrated is a new database with Herald's migrations applied (a copy of a
// template migrated once per test binary).
func migrated(t *testing.T) string {
	return pgtest.DSNFrom(t, "herald_migrated", func(ctx context.Context, dsn string) error {
		db, err := pgstore.Open(ctx, pgstore.Options{DSN: dsn})
		if err != nil {
			return err
		}
		db.Close()
		return nil
	})
}

// replica opens its own pool on dsn, as one Herald replica would, and the
// queue named name on it. The pool is closed when the test ends, unless
// the test closes it first.
func replica(t *testing.T, dsn, name string) (*pgstore.DB, *pgqueue.Backend) {
	t.Helper()
	db, err := pgstore.Open(testCtx(t), pgstore.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	be, err := pgqueue.New(db, name)
	if err != nil {
		t.Fatal(err)
	}
	return db, be
}

func TestConformance(t *testing.T) {
	queuetest.RunConformance(t, func(t *testing.T) (queue.Backend, func() queue.Backend) {
		dsn := migrated(t)
		db, be := replica(t, dsn, "q")
		// Another queue in the same tables, with records of its own: the
		// contract must hold per queue name.
		_, other := replica(t, dsn, "other")
		enqueueN(t, other, 3, time.Time{})
		return be, func() queue.Backend {
			db.Close()
			_, be := replica(t, dsn, "q")
			return be
		}
	})
}

// enqueueN stores n pending records due at due, in one transaction.
func enqueueN(t *testing.T, be *pgqueue.Backend, n int, due time.Time) []uint64 {
	t.Helper()
	var ids []uint64
	err := be.Write(testCtx(t), func(tx queue.Tx) error {
		ids = ids[:0]
		for i := range n {
			r := &queue.Record{State: queue.Pending, Created: due, RetryFrom: due, NextAttempt: due,
				Data: fmt.Appendf(nil, "payload %d", i)}
			if err := be.Enqueue(tx, r); err != nil {
				return err
			}
			ids = append(ids, r.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestReplicasClaimDisjoint: two replicas (two pools) claiming the same
// queue at once, in small batches, get disjoint records that together are
// all of them.
func TestReplicasClaimDisjoint(t *testing.T) {
	ctx := testCtx(t)
	dsn := migrated(t)
	_, a := replica(t, dsn, "q")
	_, b := replica(t, dsn, "q")
	t0 := time.Now()
	want := enqueueN(t, a, 300, t0)

	got := map[string][]uint64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for name, be := range map[string]*pgqueue.Backend{"a": a, "b": b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				c, _, err := be.Claim(ctx, t0, 7, time.Hour)
				if err != nil {
					t.Error(err)
					return
				}
				if len(c) == 0 {
					return
				}
				mu.Lock()
				for _, x := range c {
					if x.Err != nil || x.Record == nil || x.Record.ID != x.ID {
						t.Errorf("claimed %d: %+v", x.ID, x)
					}
					got[name] = append(got[name], x.ID)
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()

	seen := map[uint64]string{}
	for name, ids := range got {
		for _, id := range ids {
			if other, dup := seen[id]; dup {
				t.Fatalf("record %d claimed by %s and by %s", id, other, name)
			}
			seen[id] = name
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("claimed %d distinct records of %d", len(seen), len(want))
	}
	for _, id := range want {
		if _, ok := seen[id]; !ok {
			t.Fatalf("record %d never claimed", id)
		}
	}
	if len(got["a"]) == 0 || len(got["b"]) == 0 {
		// Not a failure of the contract, but then the test did not show
		// what it is about.
		t.Logf("one replica claimed everything: a %d, b %d", len(got["a"]), len(got["b"]))
	}
}

// TestExpiredLeaseIsClaimedByAnother: a replica claims records and never
// records its attempts (stuck, but alive: it keeps its owner lock). The
// other replica does not get them while the lease runs, and gets all of
// them when it ends.
func TestExpiredLeaseIsClaimedByAnother(t *testing.T) {
	ctx := testCtx(t)
	dsn := migrated(t)
	_, a := replica(t, dsn, "q")
	_, b := replica(t, dsn, "q")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	want := enqueueN(t, a, 5, t0)
	const lease = 3 * time.Minute

	c, _, err := a.Claim(ctx, t0, 10, lease)
	if err != nil || len(c) != len(want) {
		t.Fatalf("first replica claimed %d: %v", len(c), err)
	}

	c, next, err := b.Claim(ctx, t0.Add(lease-time.Second), 10, lease)
	if err != nil || len(c) != 0 || !next.Equal(t0.Add(lease)) {
		t.Fatalf("during the lease: claimed %d, next %v (want %v), %v", len(c), next, t0.Add(lease), err)
	}
	c, _, err = b.Claim(ctx, t0.Add(lease), 10, lease)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, x := range c {
		if x.Record == nil || string(x.Record.Data) == "" {
			t.Fatalf("claimed %d without its record: %+v", x.ID, x)
		}
		ids = append(ids, x.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("after the lease ended the second replica claimed %v, want %v", ids, want)
	}
}

// TestDeadReplicasLeasesClaimedAtOnce: a replica claims records and dies
// (its database connections end, as when its process is killed). The other
// replica does not wait for the leases to run out: its claims take the
// records as soon as the dead replica's owner lock is gone, and not before.
func TestDeadReplicasLeasesClaimedAtOnce(t *testing.T) {
	ctx := testCtx(t)
	dsn := migrated(t)
	dbA, a := replica(t, dsn, "q")
	_, b := replica(t, dsn, "q")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	want := enqueueN(t, a, 5, t0)
	const lease = 3 * time.Minute

	c, _, err := a.Claim(ctx, t0, 10, lease)
	if err != nil || len(c) != len(want) {
		t.Fatalf("first replica claimed %d: %v", len(c), err)
	}
	// Alive: its leases hold, and the other replica is told to look again
	// within pgqueue.ReapEvery, not at the lease's end.
	now := t0.Add(time.Second)
	c, next, err := b.Claim(ctx, now, 10, lease)
	if err != nil || len(c) != 0 || !next.Equal(now.Add(pgqueue.ReapEvery)) {
		t.Fatalf("while the first replica lives: claimed %d, next %v (want %v), %v", len(c), next, now.Add(pgqueue.ReapEvery), err)
	}

	dbA.Close()
	var ids []uint64
	deadline := time.Now().Add(3 * pgqueue.ReapEvery)
	for len(ids) == 0 && time.Now().Before(deadline) {
		if c, _, err = b.Claim(ctx, now, 10, lease); err != nil {
			t.Fatal(err)
		}
		for _, x := range c {
			ids = append(ids, x.ID)
		}
		time.Sleep(10 * time.Millisecond) // the server ends the dead connection's session asynchronously
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("after the first replica died the second claimed %v, want %v (long before the lease ends)", ids, want)
	}
}

// TestTwoQueuesDeliverExactlyOnce: queue workers (queue.Queue) on two
// replicas share one PostgreSQL queue; records enqueued while they run are
// each delivered once, by one of them.
func TestTwoQueuesDeliverExactlyOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	dsn := migrated(t)
	const n = 400

	var mu sync.Mutex
	delivered := map[string]int{} // payload -> deliveries
	by := map[string]int{}        // replica -> deliveries
	queues := make([]*queue.Queue, 2)
	var wg sync.WaitGroup
	for i := range queues {
		_, be := replica(t, dsn, "outbox")
		name := fmt.Sprintf("replica%d", i)
		q, err := queue.New(be, queue.Options{
			Name:    name,
			Workers: 4,
			Deliver: func(ctx context.Context, r *queue.Record) queue.Outcome {
				mu.Lock()
				delivered[string(r.Data)]++
				by[name]++
				mu.Unlock()
				return queue.Outcome{Class: queue.OK, Reply: "250 ok"}
			},
			TrimDone: true,
			Log:      slog.New(slog.NewTextHandler(failOnLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			t.Fatal(err)
		}
		queues[i] = q
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := q.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })

	// Enqueue in batches, through each replica in turn; both are woken, as
	// a NOTIFY would wake them.
	for i := 0; i < n; i += 20 {
		q := queues[i/20%2]
		err := q.Backend().Write(ctx, func(tx queue.Tx) error {
			for j := i; j < i+20; j++ {
				if err := q.Enqueue(tx, &queue.Record{Data: fmt.Appendf(nil, "mail %d", j)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		queues[0].Wake()
		queues[1].Wake()
	}

	end := time.Now().Add(deadline)
	var s queue.Counts
	for {
		var err error
		if s, err = queues[0].Stats(ctx); err != nil {
			t.Fatal(err)
		}
		if s.Done == n || time.Now().After(end) {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded by end
	}
	if s != (queue.Counts{Done: n}) {
		t.Fatalf("stats %+v, want all %d done", s, n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delivered) != n {
		t.Fatalf("%d distinct payloads delivered, want %d", len(delivered), n)
	}
	for p, k := range delivered {
		if k != 1 {
			t.Fatalf("%q delivered %d times", p, k)
		}
	}
	t.Logf("deliveries by replica: %v", by)
	// Done records lost their payload (TrimDone) and are never claimed again.
	l, err := queues[1].List(ctx, queue.Page{State: queue.Done, Limit: 1})
	if err != nil || len(l) != 1 {
		t.Fatalf("List = %v %v", l, err)
	}
	if r, err := queues[1].Get(ctx, l[0].ID); err != nil || r.Data != nil || len(r.Attempts) != 1 {
		t.Fatalf("a done record: %+v %v", r, err)
	}
}

// failOnLog fails the test on anything a queue logs at warning or above (a
// failed claim or recording).
type failOnLog struct{ t *testing.T }

func (f failOnLog) Write(p []byte) (int, error) {
	f.t.Errorf("queue logged: %s", p)
	return len(p), nil
}

// TestClaimSkipsARecordAnotherClaimHolds: a record locked by another
// replica's claim transaction (not yet committed) is skipped without
// waiting, and Claim says to look again a moment later rather than
// reporting nothing to do.
func TestClaimSkipsARecordAnotherClaimHolds(t *testing.T) {
	ctx := testCtx(t)
	dsn := migrated(t)
	dbA, a := replica(t, dsn, "q")
	_, b := replica(t, dsn, "q")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ids := enqueueN(t, a, 2, t0)

	tx, err := dbA.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT id FROM queue_records WHERE id = $1 FOR UPDATE`, int64(ids[0])); err != nil {
		t.Fatal(err)
	}
	c, next, err := b.Claim(ctx, t0, 5, time.Minute)
	if err != nil || len(c) != 1 || c[0].ID != ids[1] {
		t.Fatalf("claimed %+v, %v: want only %d", c, err, ids[1])
	}
	if !next.Equal(t0.Add(time.Second)) {
		t.Fatalf("next %v, want a recheck at %v", next, t0.Add(time.Second))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _, _ = b.Claim(ctx, t0.Add(time.Second), 5, time.Minute); len(c) != 1 || c[0].ID != ids[0] {
		t.Fatalf("after the other claim let go: %+v", c)
	}
}

// TestCountersExactWhileFolding: replicas changing states at once never wait
// on a shared counter row, and Stats is exact before, during and after the
// deltas are folded, by both replicas at once.
func TestCountersExactWhileFolding(t *testing.T) {
	ctx := testCtx(t)
	dsn := migrated(t)
	dbA, a := replica(t, dsn, "q")
	_, b := replica(t, dsn, "q")
	_, other := replica(t, dsn, "other")
	enqueueN(t, other, 4, time.Now())

	var wg sync.WaitGroup
	for _, be := range []*pgqueue.Backend{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				ids := enqueueN(t, be, 5, time.Now())
				err := be.Write(ctx, func(tx queue.Tx) error {
					for i, id := range ids[:3] {
						if _, err := be.Update(tx, id, func(r *queue.Record) error {
							r.State = []queue.State{queue.Done, queue.Failed, queue.Cancelled}[i]
							return nil
						}); err != nil {
							return err
						}
					}
					_, err := be.Delete(tx, ids[0])
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				if err := be.Fold(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := queue.Counts{Pending: 80, Failed: 40, Cancelled: 40}
	if s, err := a.Stats(ctx, time.Time{}); err != nil || s != want {
		t.Fatalf("Stats = %+v %v, want %+v", s, err, want)
	}
	if err := b.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := dbA.Pool().QueryRow(ctx, `SELECT count(*) FROM queue_count_deltas WHERE queue = 'q'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d deltas left after a fold (%v)", left, err)
	}
	if s, err := b.Stats(ctx, time.Time{}); err != nil || s != want {
		t.Fatalf("Stats after folding = %+v %v, want %+v", s, err, want)
	}
	if s, err := other.Stats(ctx, time.Time{}); err != nil || s != (queue.Counts{Pending: 4}) {
		t.Fatalf("the other queue's Stats = %+v %v", s, err)
	}
}
