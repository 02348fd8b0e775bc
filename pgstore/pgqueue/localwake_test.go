package pgqueue_test

import (
	"testing"
	"time"

	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// While this process's worker runs (SetLocalWake), an Enqueue in a
// store.DB write transaction wakes it after the commit and sends no NOTIFY
// (which would serialize the commits of every enqueuing transaction); once
// it stopped, Enqueue notifies the other replicas again.
func TestEnqueueWakesTheLocalWorkerInsteadOfNotifying(t *testing.T) {
	ctx := testCtx(t)
	db, be := replica(t, migrated(t), "localwake")
	sdb := store.NewPostgres(db)
	conn, err := db.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN "`+be.Channel()+`"`); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n.Payload
	}
	enqueue := func() {
		now := time.Now()
		if err := sdb.Commit(func(tx *store.Tx) error {
			return be.Enqueue(tx, &queue.Record{Created: now, NextAttempt: now, RetryFrom: now})
		}); err != nil {
			t.Fatal(err)
		}
	}

	woke := make(chan struct{}, 4)
	be.SetLocalWake(func() { woke <- struct{}{} })
	enqueue()
	select {
	case <-woke:
	default:
		t.Fatal("the local worker was not woken after the commit")
	}
	// Notifications arrive in commit order: the marker comes first only if
	// the enqueue sent none.
	if err := pgstore.Notify(ctx, db.Pool(), be.Channel(), "marker"); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != "marker" {
		t.Fatalf("notification %q before the marker: the enqueue notified", p)
	}

	be.SetLocalWake(nil)
	enqueue()
	if p := next(); p != "" {
		t.Fatalf("notification %q, want the enqueue's", p)
	}
	if len(woke) != 0 {
		t.Fatal("a stopped worker was woken")
	}
}
