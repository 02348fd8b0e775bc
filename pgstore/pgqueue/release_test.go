package pgqueue_test

import (
	"testing"
	"time"

	"github.com/herald-im/herald/queue"
)

// An Update that takes a record out of pending ends its lease in the same
// statement, so the worker's release after it needs no statement; a record
// put back to pending and leased again is released for real.
func TestFinishingUpdateEndsTheLease(t *testing.T) {
	ctx := testCtx(t)
	db, be := replica(t, migrated(t), "release")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ids := enqueueN(t, be, 1, t0)
	id := ids[0]
	leased := func() bool {
		t.Helper()
		var l bool
		if err := db.Pool().QueryRow(ctx, `SELECT lease_until IS NOT NULL OR lease_owner IS NOT NULL FROM queue_records WHERE id = $1`,
			int64(id)).Scan(&l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	setState := func(s queue.State) {
		t.Helper()
		if err := be.Write(ctx, func(tx queue.Tx) error {
			_, err := be.Update(tx, id, func(r *queue.Record) error { r.State = s; return nil })
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(at time.Time) {
		t.Helper()
		c, _, err := be.Claim(ctx, at, 10, time.Hour)
		if err != nil || len(c) != 1 || c[0].ID != id {
			t.Fatalf("claimed %+v, %v; want record %d", c, err, id)
		}
	}

	claim(t0)
	setState(queue.Done)
	if leased() {
		t.Fatal("a record updated out of pending keeps its lease")
	}
	if err := be.Lease(id, time.Time{}); err != nil {
		t.Fatal(err)
	}

	// Finished without being attempted here (a console action), then put
	// back: the release remembered for it must not stand in for a real one.
	setState(queue.Pending)
	setState(queue.Cancelled)
	setState(queue.Pending)
	claim(t0.Add(time.Minute))
	if !leased() {
		t.Fatal("the claim did not lease the record")
	}
	if err := be.Lease(id, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if leased() {
		t.Fatal("Lease did not release a record leased again after an earlier finishing Update")
	}
}
