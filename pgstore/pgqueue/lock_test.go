package pgqueue_test

import (
	"errors"
	"testing"
	"time"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// TestLockForUpdateReadsAGroupOnce: LockForUpdate reads and locks a group
// of records in one statement, and the Updates that follow in the same
// Write use what it read instead of reading each record again; a record it
// did not find is still reported by its Update.
func TestLockForUpdateReadsAGroupOnce(t *testing.T) {
	ctx := testCtx(t)
	db, a := replica(t, migrated(t), "q")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ids := enqueueN(t, a, 3, t0)
	const missing = 1 << 40

	err := a.Write(ctx, func(tx queue.Tx) error {
		if err := a.LockForUpdate(tx, append(ids, missing)); err != nil {
			return err
		}
		// Every record of the group is locked now: another connection
		// cannot lock any of them.
		for _, id := range ids {
			var got int64
			err := db.Pool().QueryRow(ctx, `SELECT id FROM queue_records WHERE queue = 'q' AND id = $1 FOR UPDATE NOWAIT`, int64(id)).Scan(&got)
			if err == nil {
				t.Errorf("record %d was not locked by LockForUpdate", id)
			}
		}
		// A change the Updates do not read: they use LockForUpdate's copy.
		if _, err := tx.(*store.Tx).PG.Exec(ctx, `UPDATE queue_records SET last_error = 'changed behind' WHERE queue = 'q' AND id = $1`, int64(ids[0])); err != nil {
			return err
		}
		for _, id := range ids {
			r, err := a.Update(tx, id, func(r *queue.Record) error {
				if r.LastError != "" {
					t.Errorf("record %d: Update read it again (last_error %q)", r.ID, r.LastError)
				}
				r.State, r.Finished = queue.Done, t0
				return nil
			})
			if err != nil || r.State != queue.Done || string(r.Data) == "" {
				t.Errorf("Update %d: %+v, %v", id, r, err)
			}
		}
		if _, err := a.Update(tx, missing, func(*queue.Record) error { return nil }); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("Update of a record LockForUpdate did not find: %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		r, err := a.Get(ctx, id)
		if err != nil || r.State != queue.Done {
			t.Fatalf("record %d after the commit: %+v, %v", id, r, err)
		}
	}
	if s, err := a.Stats(ctx, t0); err != nil || s.Done != 3 || s.Pending != 0 {
		t.Fatalf("stats %+v, %v", s, err)
	}
}
