package invites

import (
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// Backlog is the pending onbind deliveries: how many, and since when the
// first-queued of them has been waiting (queued, or retried by an operator;
// zero when none). It walks the pending keys of the state index, no values,
// and reads one delivery record.
func (d *Deliveries) Backlog() (n int, oldest time.Time, err error) {
	err = d.db.View(func(tx *bolt.Tx) error {
		var first uint64
		n, first = store.CountPrefix(tx.Bucket(bktDeliveryState), join0(string(DeliveryPending), ""))
		if n == 0 {
			return nil
		}
		dl, err := getDelivery(tx, first)
		if errors.Is(err, ErrNoDelivery) {
			return nil // a stale index entry
		}
		if err != nil {
			return err
		}
		oldest = dl.RetryFrom
		if oldest.IsZero() {
			oldest = dl.Created
		}
		return nil
	})
	return n, oldest, err
}

// PendingCount is how many invites are pending: one cursor step per pending
// invite over the state index's keys, no values.
func (s *Service) PendingCount() (int, error) {
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		n, _ = store.CountPrefix(tx.Bucket(bktState), join0(StatePending, ""))
		return nil
	})
	return n, err
}
