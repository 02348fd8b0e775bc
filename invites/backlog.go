package invites

import (
	"context"
	"time"

	"github.com/herald-im/herald/store"
)

// Backlog is the pending onbind deliveries: how many, and since when the
// first-queued of them has been waiting (queued, or retried by an operator;
// zero when none). It reads the queue's state counter and one record.
func (d *Deliveries) Backlog() (n int, oldest time.Time, err error) {
	return d.q.Backlog(context.Background())
}

// PendingCount is how many invites are pending, from the state counter kept
// with every write.
func (s *Service) PendingCount() (int, error) {
	var n int
	err := s.db.View(func(tx *store.Tx) error {
		c, err := s.st.counters(tx, []counterKey{stateCounter(StatePending)})
		n = c[stateCounter(StatePending)]
		return err
	})
	return n, err
}
