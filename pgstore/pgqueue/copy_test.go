package pgqueue_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
)

// Two bbolt queues both number their records from 1; copied into
// PostgreSQL's one table they keep their ids (the key is (queue, id)), their
// sums match on both sides, and later enqueues get ids above every copied one.
func TestCopyFromBoltKeepsIDsPerQueue(t *testing.T) {
	ctx := testCtx(t)
	bdb, err := bolt.Open(filepath.Join(t.TempDir(), "herald.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	dsn := migrated(t)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC) // nanoseconds: PostgreSQL keeps microseconds
	sizes := map[string]int{"outbox": 2500, "onbind": 7}
	for name, n := range sizes {
		src, err := queue.OpenBolt(bdb, name)
		if err != nil {
			t.Fatal(err)
		}
		err = src.Write(ctx, func(tx queue.Tx) error {
			for i := range n {
				r := &queue.Record{ID: uint64(i + 1), State: queue.Pending, Created: t0, RetryFrom: t0, NextAttempt: t0.Add(time.Duration(i) * time.Second),
					Meta: []byte(`{"n":1}`), Data: []byte(name)}
				if i%3 == 0 {
					r.State, r.Finished = queue.Done, t0.Add(time.Minute)
					r.Attempts = []queue.Attempt{{At: t0, Temporary: true, Reply: "451 later"}, {At: t0.Add(time.Minute), OK: true, Reply: "250"}}
				}
				if err := src.Import(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_, dst := replica(t, dsn, name)
		var indexed, progressed atomic.Int64
		n2, err := queue.Copy(ctx, src, dst, func(tx queue.Tx, r *queue.Record) error { indexed.Add(1); return nil },
			func(k int) { progressed.Add(int64(k)) })
		if err != nil || n2 != n || indexed.Load() != int64(n) || progressed.Load() != int64(n) {
			t.Fatalf("%s: copied %d (each %d, progress %d) of %d: %v", name, n2, indexed.Load(), progressed.Load(), n, err)
		}
		want, err := queue.Sum(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := queue.Sum(ctx, dst)
		if err != nil || got != want || got.Count != int64(n) {
			t.Fatalf("%s: sums differ: bbolt %+v, postgres %+v %v", name, want, got, err)
		}
		r, err := dst.Get(ctx, 1)
		if err != nil || string(r.Data) != name {
			t.Fatalf("%s: record 1 on postgres: %+v %v", name, r, err)
		}
		bs, _ := src.Stats(ctx, t0.Add(-time.Hour))
		ps, _ := dst.Stats(ctx, t0.Add(-time.Hour))
		if bs != ps {
			t.Fatalf("%s: counts bbolt %+v, postgres %+v", name, bs, ps)
		}
	}
	_, onbind := replica(t, dsn, "onbind")
	var next uint64
	if err := onbind.Write(ctx, func(tx queue.Tx) error {
		r := &queue.Record{State: queue.Pending, Created: t0, RetryFrom: t0, NextAttempt: t0}
		err := onbind.Enqueue(tx, r)
		next = r.ID
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if next <= uint64(sizes["outbox"]) {
		t.Fatalf("enqueue after the copy got id %d, want above %d", next, sizes["outbox"])
	}
}

// A record enqueued on one replica is delivered by the other replica's
// worker at once: the enqueue notifies, and the worker, which had nothing
// due and no poll for an hour, is woken by the notification.
func TestEnqueueOnOneReplicaWakesTheOther(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	dsn := migrated(t)
	_, a := replica(t, dsn, "outbox")
	dbB, b := replica(t, dsn, "outbox")
	delivered := make(chan uint64, 1)
	var wakes atomic.Int64
	idle := make(chan struct{}) // closed by the first claim that began after a wake-up
	watched := &claimWatch{Backend: b, claimed: func(began int64) {
		if began > 0 {
			select {
			case <-idle:
			default:
				close(idle)
			}
		}
	}, wakes: &wakes}
	qb, err := queue.New(watched, queue.Options{Deliver: func(ctx context.Context, r *queue.Record) queue.Outcome {
		delivered <- r.ID
		return queue.Outcome{Class: queue.OK}
	}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { qb.Run(ctx); done <- struct{}{} }()
	go func() {
		pgqueue.WakeOn(ctx, dbB, "outbox", time.Hour, func() { wakes.Add(1); qb.Wake() })
		done <- struct{}{}
	}()
	defer func() { cancel(); <-done; <-done }()

	// B's listener signals once it listens; wait for the worker's claim
	// that follows (it finds nothing), so the next wake-up can only come
	// from the notification (the fallback is an hour, the worker's wait too).
	select {
	case <-idle:
	case <-time.After(deadline):
		t.Fatal("B never listened")
	}
	start := time.Now()
	ids := enqueueN(t, a, 1, time.Now())
	select {
	case id := <-delivered:
		if id != ids[0] {
			t.Fatalf("delivered %d, enqueued %d", id, ids[0])
		}
		t.Logf("delivered by the other replica %v after the enqueue", time.Since(start).Round(time.Millisecond))
		if time.Since(start) > 5*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
	case <-time.After(deadline):
		t.Fatal("the other replica's worker was not woken")
	}
}

// claimWatch tells claimed, after each Claim, how many wake-ups had happened
// when it began.
type claimWatch struct {
	queue.Backend
	wakes   *atomic.Int64
	claimed func(began int64)
}

func (c *claimWatch) Claim(ctx context.Context, now time.Time, n int, lease time.Duration) ([]queue.Claimed, time.Time, error) {
	began := c.wakes.Load()
	out, next, err := c.Backend.Claim(ctx, now, n, lease)
	c.claimed(began)
	return out, next, err
}
