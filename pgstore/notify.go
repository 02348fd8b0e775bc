package pgstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/internal/background"
)

// Execer runs a statement: a pool, a connection or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Notify signals on channel that something changed (a key rotated or
// retired). Given a transaction, the signal is sent when it commits and not
// at all if it rolls back, so write the change and notify in one
// transaction. The payload is a hint; subscribers re-read the state.
func Notify(ctx context.Context, q Execer, channel, payload string) error {
	if _, err := q.Exec(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		return fmt.Errorf("pgstore: notify %s: %w", channel, err)
	}
	return nil
}

// listenerAppName marks listening connections in pg_stat_activity.
const listenerAppName = "herald-listen"

// Subscribe returns a channel that receives a value when channel is
// notified, and also: once the listening connection is up (and again after
// every reconnection, since notifications sent while it was down are lost),
// and every fallback interval whatever happens (polling, for when LISTEN does
// not reach this replica: a pooler in transaction mode, a network partition
// the connection has not noticed yet). Signals are coalesced: a slow reader
// gets one, not a backlog. The subscriber re-reads what it caches on each.
// The channel is closed when ctx is done.
//
// Each Subscribe holds one connection of its own, outside the pool.
func (db *DB) Subscribe(ctx context.Context, channel string, fallback time.Duration) <-chan struct{} {
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		background.Every(ctx, fallback, signal)
	}()
	go func() {
		defer wg.Done()
		db.listen(ctx, channel, signal)
	}()
	go func() { wg.Wait(); close(out) }()
	return out
}

// listen keeps a LISTEN connection up until ctx is done, reconnecting with
// backoff.
func (db *DB) listen(ctx context.Context, channel string, signal func()) {
	const minWait, maxWait = 100 * time.Millisecond, 10 * time.Second
	wait := minWait
	for ctx.Err() == nil {
		err := db.listenOnce(ctx, channel, func() { wait = minWait; signal() })
		if ctx.Err() != nil {
			return
		}
		db.log.Warn("listen: connection lost; reconnecting", "channel", channel, "err", err, "in", wait)
		if !background.Sleep(ctx, wait) {
			return
		}
		wait = min(2*wait, maxWait)
	}
}

// listenOnce connects, listens and signals for each notification until the
// connection fails.
func (db *DB) listenOnce(ctx context.Context, channel string, signal func()) error {
	cfg := db.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = listenerAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := detached(ctx)
		_ = conn.Close(cctx)
		cancel()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		signal()
	}
}
