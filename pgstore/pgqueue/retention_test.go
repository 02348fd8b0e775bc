package pgqueue_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// Two replicas apply a queue's retention at the same moment: every old
// finished record is deleted once (the owner's OnDelete runs once per record
// in a committed transaction), and neither logs an error over the records
// the other deleted first.
func TestRetentionOnTwoReplicasAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	dsn := migrated(t)
	const n = 1200
	old := time.Now().Add(-48 * time.Hour)
	_, seed := replica(t, dsn, "outbox")
	if err := seed.Write(ctx, func(tx queue.Tx) error {
		for i := range n {
			r := &queue.Record{ID: uint64(i + 1), State: queue.Done, Created: old, RetryFrom: old, NextAttempt: old, Finished: old}
			if err := seed.Import(tx, r); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var deleted atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		_, be := replica(t, dsn, "outbox")
		q, err := queue.New(be, queue.Options{
			Deliver:   func(ctx context.Context, r *queue.Record) queue.Outcome { return queue.Outcome{Class: queue.OK} },
			Retention: time.Hour,
			OnDelete: func(tx queue.Tx, r *queue.Record) error {
				tx.(*store.Tx).OnCommit(func() { deleted.Add(1) })
				return nil
			},
			Log: slog.New(slog.NewTextHandler(failOnLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			q.Run(ctx) // prunes at once when it starts
		}()
	}
	close(start)
	end := time.Now().Add(deadline)
	for deleted.Load() < n && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded by end
	}
	cancel()
	wg.Wait()
	if got := deleted.Load(); got != n {
		t.Fatalf("OnDelete committed for %d records, want %d", got, n)
	}
	if s, err := seed.Stats(context.Background(), old); err != nil || s != (queue.Counts{}) {
		t.Fatalf("stats after retention: %+v %v", s, err)
	}
}
