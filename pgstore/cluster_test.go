package pgstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/herald-im/herald/internal/pgtest"
)

// counter counts a replica's attempts at a periodic job.
type counter struct{ attempts, ran atomic.Int64 }

func (c *counter) hook(ran bool) {
	c.attempts.Add(1)
	if ran {
		c.ran.Add(1)
	}
}

// runPeriodic runs job on db until the test ends, and waits for it to stop.
func runPeriodic(t *testing.T, db *DB, job Job) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { db.RunPeriodic(ctx, job); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(deadline):
			t.Errorf("RunPeriodic(%s) did not return after its context was cancelled", job.Name)
		}
	})
}

// Three replicas polling a job due once an hour: it runs once.
func TestPeriodicRunsOncePerPeriodAcrossReplicas(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	var runs atomic.Int64
	var counters [3]counter
	for i := range counters {
		db := open(t, ctx, Options{DSN: dsn})
		runPeriodic(t, db, Job{
			Name: "sweep", Period: time.Hour, Poll: 5 * time.Millisecond,
			Run:       func(context.Context) error { runs.Add(1); return nil },
			attempted: counters[i].hook,
		})
	}
	waitFor(t, "every replica to try the job 20 times", func() bool {
		for i := range counters {
			if counters[i].attempts.Load() < 20 {
				return false
			}
		}
		return true
	})
	if n := runs.Load(); n != 1 {
		t.Fatalf("the job ran %d times in one period; want 1", n)
	}
	db := open(t, ctx, Options{DSN: dsn})
	var inAnHour bool
	if err := db.Pool().QueryRow(ctx, "SELECT next_run BETWEEN last_started + interval '59 minutes' AND last_started + interval '61 minutes' FROM periodic_jobs WHERE name = 'sweep'").Scan(&inAnHour); err != nil || !inAnHour {
		t.Fatalf("next_run is not one period after the run: %v, %v", inAnHour, err)
	}
}

// A failed run is not recorded as done: the job runs again at the next poll.
func TestPeriodicFailedRunIsRetried(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	var runs atomic.Int64
	runPeriodic(t, db, Job{
		Name: "flaky", Period: time.Hour, Poll: 5 * time.Millisecond,
		Run: func(context.Context) error {
			if runs.Add(1) == 1 {
				return context.DeadlineExceeded // any error
			}
			return nil
		},
	})
	waitFor(t, "the job to run a second time", func() bool { return runs.Load() >= 2 })
}

// The holder's connection dies while the job runs (pg_terminate_backend, as
// when its replica is killed or partitioned): its job's context is
// cancelled, the lock is free, and another replica runs the job.
func TestPeriodicLeadershipMovesWhenHolderDies(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	aStarted, aStopped := make(chan struct{}), make(chan struct{})
	dbA := open(t, ctx, Options{DSN: dsn})
	runPeriodic(t, dbA, Job{
		Name: "sweep", Period: time.Hour, Poll: 5 * time.Millisecond, Heartbeat: 10 * time.Millisecond,
		Run: func(ctx context.Context) error {
			close(aStarted)
			<-ctx.Done()
			close(aStopped)
			return ctx.Err()
		},
	})
	recv(t, "replica A to start the job", aStarted)

	var b counter
	bRan := make(chan struct{})
	dbB := open(t, ctx, Options{DSN: dsn})
	runPeriodic(t, dbB, Job{
		Name: "sweep", Period: time.Hour, Poll: 5 * time.Millisecond, Heartbeat: 10 * time.Millisecond,
		Run:       func(context.Context) error { close(bRan); return nil },
		attempted: b.hook,
	})
	waitFor(t, "replica B to find the job held 10 times", func() bool { return b.attempts.Load() >= 10 })
	if b.ran.Load() != 0 {
		t.Fatal("replica B ran the job while A held it")
	}

	// End A's session holding the job's advisory lock.
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var killed int
	err = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1 -- not the replicas' owner locks (two keys)
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d lock holders, %v; want 1", killed, err)
	}
	recv(t, "replica A's job to be cancelled", aStopped)
	recv(t, "replica B to take the job over", bRan)

	// B records its run after Run returns: wait for that commit.
	var holderName string
	var later bool
	waitFor(t, "replica B to record its run", func() bool {
		err := admin.QueryRow(ctx, "SELECT last_holder, next_run > now() + interval '59 minutes' FROM periodic_jobs WHERE name = 'sweep'").Scan(&holderName, &later)
		return err == nil && holderName != "" && later
	})
}

// A notification from one replica's pool reaches a subscriber on another,
// also after the subscriber's connection was cut (it reconnects and says so).
func TestNotifyReachesAnotherPool(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	dbA := open(t, ctx, Options{DSN: dsn})
	dbB := open(t, ctx, Options{DSN: dsn})
	subCtx, cancel := context.WithCancel(ctx)
	sub := dbA.Subscribe(subCtx, "keys changed", time.Hour)
	recv(t, "the subscription to start listening", sub)

	if err := Notify(ctx, dbB.Pool(), "keys changed", "ed25519:abc"); err != nil {
		t.Fatal(err)
	}
	recv(t, "the notification", sub)

	// Sent inside a transaction: it arrives once the transaction commits.
	err := dbB.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error { return Notify(ctx, tx, "keys changed", "") })
	if err != nil {
		t.Fatal(err)
	}
	recv(t, "the notification sent in a transaction", sub)

	// Cut the listening connection.
	var cut int
	err = dbB.Pool().QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, listenerAppName).Scan(&cut)
	if err != nil || cut != 1 {
		t.Fatalf("terminated %d listeners, %v; want 1", cut, err)
	}
	recv(t, "the signal that the listener reconnected", sub)
	if err := Notify(ctx, dbB.Pool(), "keys changed", ""); err != nil {
		t.Fatal(err)
	}
	recv(t, "a notification after reconnecting", sub)

	cancel()
	for range sub { // drain: closed once the subscription stops
	}
}

// A replica whose LISTEN connection cannot be made (a pooler in
// transaction mode, a partition) still learns of changes by polling: the
// fallback interval signals on its own.
func TestSubscribeFallsBackToPolling(t *testing.T) {
	ctx := testCtx(t)
	cfg, err := poolConfig(Options{DSN: "host=/nonexistent-socket-dir user=herald connect_timeout=1"})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg) // connects lazily
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db := &DB{pool: pool, log: slog.New(slog.DiscardHandler)}
	subCtx, cancel := context.WithCancel(ctx)
	sub := db.Subscribe(subCtx, "keys changed", 10*time.Millisecond)
	for range 5 {
		recv(t, "a fallback signal", sub)
	}
	cancel()
	for range sub { // closed once the subscription stops
	}
}

// Jobs due at once on a replica with a small pool all run: each running job
// holds a pool connection for its lock and takes another for its work, so
// they must not all hold their lock connections at once (DB.jobMu).
func TestPeriodicJobsDueAtOnceFitASmallPool(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t), MaxConns: 2})
	const jobs = 6
	var ran [jobs]atomic.Bool
	for i := range jobs {
		runPeriodic(t, db, Job{
			Name: fmt.Sprintf("sweep-%d", i), Period: time.Hour, Poll: 5 * time.Millisecond,
			Run: func(ctx context.Context) error {
				// The work's own transaction: one more pool connection.
				err := db.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, "SELECT 1")
					return err
				})
				if err == nil {
					ran[i].Store(true)
				}
				return err
			},
		})
	}
	waitFor(t, "every job to run", func() bool {
		for i := range ran {
			if !ran[i].Load() {
				return false
			}
		}
		return true
	})
}
