package mailer

import (
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// Backlog is the pending mail: how many, and since when the first-queued of
// them has been waiting (queued, or retried by an operator; zero when none).
// It walks the pending keys of the state index, no values, and reads one
// mail record: cheap enough for a metrics scrape, which caches it anyway.
func (q *Queue) Backlog() (n int, oldest time.Time, err error) {
	err = q.db.View(func(tx *bolt.Tx) error {
		var first uint64
		n, first = store.CountPrefix(tx.Bucket(bktState), append([]byte(Pending), 0))
		if n == 0 {
			return nil
		}
		m, err := getMail(tx, first)
		if errors.Is(err, ErrNotFound) {
			return nil // a stale index entry the worker removes
		}
		if err != nil {
			return err
		}
		oldest = m.RetryFrom
		if oldest.IsZero() {
			oldest = m.Created
		}
		return nil
	})
	return n, oldest, err
}
