package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Job is a cluster-wide periodic job (a sweep: expiry, retention, pepper
// rotation). Every replica runs RunPeriodic for it; one at a time runs it,
// once per Period across the cluster.
type Job struct {
	// Name identifies the job in periodic_jobs and names its advisory lock.
	Name string
	// Period is the time from one run's start to the next.
	Period time.Duration
	// Run does the work. Its context is cancelled when this replica loses
	// the job's lock (its connection to PostgreSQL died): another replica
	// may then be running it. A job must be idempotent, and a failed run is
	// tried again at the next poll, on whichever replica gets there first.
	Run func(ctx context.Context) error

	// Poll is how often a replica checks whether the job is due and free
	// (default Period/10, between 1s and 1m). It bounds how late a job runs
	// after its holder died.
	Poll time.Duration
	// Heartbeat is how often the holder checks its lock's connection while
	// the job runs (default 5s; each check may take up to 5s or Heartbeat,
	// whichever is longer). It bounds how long a holder that lost its lock
	// goes on running beside the replica that took over.
	Heartbeat time.Duration

	// attempted is called after each attempt with whether it ran the job
	// (tests).
	attempted func(ran bool)
}

// holder names this replica in periodic_jobs.last_holder.
var holder = func() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", h, os.Getpid())
}()

// RunPeriodic runs job on this replica whenever it is due and no other
// replica holds it, until ctx is done. It returns only then.
//
// Leadership is a session advisory lock per job, taken with
// pg_try_advisory_lock on a pool connection and held while the job runs. If
// the replica dies or its connection breaks, PostgreSQL releases the lock and
// the next replica to poll runs the job, since its next_run did not move.
// Time comes from the database (now()), so replicas' clocks do not matter.
func (db *DB) RunPeriodic(ctx context.Context, job Job) {
	poll := job.Poll
	if poll <= 0 {
		poll = min(max(job.Period/10, time.Second), time.Minute)
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		ran, err := db.tryRun(ctx, job)
		if err != nil && ctx.Err() == nil {
			db.log.Warn("periodic job", "job", job.Name, "err", err)
		}
		if job.attempted != nil {
			job.attempted(ran)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func jobLockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("herald.periodic." + name))
	return int64(h.Sum64())
}

// tryRun runs the job once if this replica gets its lock and it is due.
func (db *DB) tryRun(ctx context.Context, job Job) (ran bool, err error) {
	db.jobMu.Lock() // one job at a time per replica (DB.jobMu)
	defer db.jobMu.Unlock()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	key := jobLockKey(job.Name)
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	keep := false // the connection is fit to go back to the pool
	defer func() {
		if !keep {
			cctx, cancel := detached(ctx)
			_ = conn.Conn().Close(cctx)
			cancel()
		}
		conn.Release()
	}()
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
		return false, err
	}
	if !got {
		keep = true
		return false, nil
	}
	defer func() {
		if keep {
			// Back to the pool only once the lock is released.
			uctx, cancel := detached(ctx)
			_, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", key)
			cancel()
			keep = uerr == nil
		}
	}()

	var due bool
	err = conn.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO periodic_jobs (name, next_run) VALUES ($1, now())
			ON CONFLICT (name) DO NOTHING
			RETURNING true AS due)
		SELECT due FROM ins
		UNION ALL
		SELECT next_run <= now() FROM periodic_jobs WHERE name = $1
		LIMIT 1`, job.Name).Scan(&due)
	if err != nil {
		return false, err
	}
	if !due {
		keep = true
		return false, nil
	}
	var started time.Time
	err = conn.QueryRow(ctx, `UPDATE periodic_jobs SET last_started = now(), last_holder = $2
		WHERE name = $1 RETURNING last_started`, job.Name, holder).Scan(&started)
	if err != nil {
		return false, err
	}

	runErr, lost := runHeld(ctx, conn, job)
	if lost != nil {
		return true, fmt.Errorf("lost the job's lock while running it (another replica may take it over): %w", lost)
	}
	if runErr != nil {
		keep = true
		return true, fmt.Errorf("run failed, tried again at the next poll: %w", runErr)
	}
	// Recorded even if this replica is shutting down: the run is done.
	uctx, ucancel := detached(ctx)
	defer ucancel()
	_, err = conn.Exec(uctx, `UPDATE periodic_jobs
		SET next_run = $2::timestamptz + $3 * interval '1 microsecond', last_finished = now()
		WHERE name = $1`, job.Name, started, job.Period.Microseconds())
	if err != nil {
		return true, err
	}
	keep = true
	return true, nil
}

// runHeld runs the job while a heartbeat checks the lock's connection. If
// the connection fails, the job's context is cancelled and lost says why.
func runHeld(ctx context.Context, conn *pgxpool.Conn, job Job) (runErr, lost error) {
	beat := job.Heartbeat
	if beat <= 0 {
		beat = 5 * time.Second
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(beat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			// A slow answer is not a lost lock: give the check longer than
			// the interval between checks when that is short.
			pctx, pcancel := context.WithTimeout(ctx, max(beat, 5*time.Second))
			_, err := conn.Exec(pctx, "SELECT 1")
			pcancel()
			if err != nil {
				if ctx.Err() == nil {
					lost = err
				} else {
					lost = ctx.Err()
				}
				cancel()
				return
			}
		}
	}()
	runErr = job.Run(runCtx)
	close(stop)
	wg.Wait()
	if lost != nil && runErr == nil {
		runErr = errors.New("interrupted")
	}
	return runErr, lost
}
