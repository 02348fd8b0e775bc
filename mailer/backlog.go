package mailer

import (
	"context"
	"time"
)

// Backlog is the pending mail: how many, and since when the first-queued of
// them has been waiting (queued, or retried by an operator; zero when none).
// It reads the queue's state counter and one record: cheap enough for a
// metrics scrape, which caches it anyway.
func (q *Queue) Backlog() (n int, oldest time.Time, err error) {
	return q.q.Backlog(context.Background())
}
