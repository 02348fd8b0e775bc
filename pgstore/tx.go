package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/internal/background"
)

// ErrContention means a transaction kept failing on serialization failures
// or deadlocks until its retries ran out. It is temporary: callers answer it
// as they answer an overloaded server, never with PostgreSQL's error.
var ErrContention error = contention{}

// contention is ErrContention's type: its RetryAfter tells the HTTP error
// handler (matrix.ErrorHandler) to answer 429 M_LIMIT_EXCEEDED with that
// wait, whichever endpoint's transaction ran out of retries.
type contention struct{}

func (contention) Error() string {
	return "pgstore: the database is too busy with conflicting transactions; try again"
}

// RetryAfter is how long a client should wait before trying again.
func (contention) RetryAfter() time.Duration { return 500 * time.Millisecond }

// SQLSTATEs that mean "run the whole transaction again".
const (
	sqlstateSerializationFailure = "40001"
	sqlstateDeadlockDetected     = "40P01"
)

// TxOptions tune InTx. The zero value is READ COMMITTED with the default
// retry policy.
type TxOptions struct {
	pgx.TxOptions
	// MaxAttempts bounds the runs of the function (default 10).
	MaxAttempts int
	// SerializeOn, when set, runs the transactions given the same name one
	// at a time across every replica: a session advisory lock on the name
	// is taken on the transaction's connection before BEGIN (so the
	// transaction's snapshot is taken after the previous holder committed),
	// and within a replica the waiters queue on a mutex, so they hold no
	// pool connection while they wait. For writers that all update the same
	// row, which under SERIALIZABLE would otherwise fail each other until
	// their retries ran out.
	SerializeOn string
}

// Retry backoff: the first retry waits about retryBase, then doubling, up to
// retryCap; each wait is jittered so the conflicting transactions do not
// collide again in step.
const (
	retryBase = 2 * time.Millisecond
	retryCap  = 250 * time.Millisecond
)

// InTx runs fn in a transaction and commits it. A serialization failure or a
// deadlock (SQLSTATE 40001, 40P01), from fn's statements or from the commit,
// rolls back and runs fn again after a jittered backoff; after MaxAttempts
// InTx returns ErrContention, never the PostgreSQL error. Any other error
// from fn rolls back and is returned as it is.
//
// fn may therefore run more than once: like a bbolt Batch function it must
// do nothing outside the transaction (no mail, no HTTP); do those after InTx
// returns nil.
//
// Without SerializeOn the transaction is lazy (lazyPool): BEGIN goes with
// its first statement, and COMMIT with the writes fn handed to CommitWith
// (the pgx.Tx is a BatchCommitter), each in one round trip.
func (db *DB) InTx(ctx context.Context, opts TxOptions, fn func(pgx.Tx) error) error {
	if opts.SerializeOn == "" {
		return inTx(ctx, lazyPool{db.pool}, opts, fn, nil)
	}
	mu, _ := db.serial.LoadOrStore(opts.SerializeOn, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	key := "herald.serialize." + opts.SerializeOn
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtextextended($1, 0))", key); err != nil {
		conn.Conn().Close(context.Background()) // the lock, if taken, goes with the session
		return err
	}
	defer func() {
		uctx, cancel := detached(ctx)
		defer cancel()
		if _, err := conn.Exec(uctx, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", key); err != nil {
			conn.Conn().Close(uctx) // never back to the pool holding the lock
		}
	}()
	return inTx(ctx, conn, opts, fn, nil)
}

// beginner is what InTx needs of a pool (or a single connection).
type beginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// inTx is InTx with a hook that sees each retried error (tests).
func inTx(ctx context.Context, b beginner, opts TxOptions, fn func(pgx.Tx) error, retried func(error)) error {
	attempts := opts.MaxAttempts
	if attempts <= 0 {
		attempts = 10
	}
	wait := retryBase
	for attempt := 1; ; attempt++ {
		err := pgx.BeginTxFunc(ctx, b, opts.TxOptions, fn)
		if err == nil || !retryable(err) {
			return err
		}
		if retried != nil {
			retried(err)
		}
		if attempt >= attempts {
			return fmt.Errorf("%w (%d attempts)", ErrContention, attempt)
		}
		// Full jitter in [wait/2, wait).
		d := wait/2 + rand.N(wait/2)
		if !background.Sleep(ctx, d) {
			return ctx.Err()
		}
		wait = min(2*wait, retryCap)
	}
}

// retryable says err is a serialization failure or a deadlock, wherever it
// is wrapped.
func retryable(err error) bool {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return false
	}
	return pg.Code == sqlstateSerializationFailure || pg.Code == sqlstateDeadlockDetected
}
