package pgqueue

import (
	"context"
	"time"

	"github.com/herald-im/herald/pgstore"
)

// Channel is the NOTIFY channel of the queue named name (Backend.Channel).
func Channel(name string) string { return "herald_queue_" + name }

// WakeOn calls wake whenever a replica enqueues a pending record in the
// queue named name (its Enqueue notifies the queue's channel at commit), and
// at least every fallback whatever happens (notifications can be lost: a
// pooler in transaction mode, a listening connection being re-established),
// until ctx is done. wake is the queue's Wake: its worker claims at once
// instead of sleeping until the next record it knows of is due.
func WakeOn(ctx context.Context, db *pgstore.DB, name string, fallback time.Duration, wake func()) {
	for range db.Subscribe(ctx, Channel(name), fallback) {
		wake()
	}
}
