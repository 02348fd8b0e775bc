package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/store"
)

// ErrBoltOnly is what a bbolt-only operation (a backup snapshot, a
// consistency check, a scrub) answers on PostgreSQL, where the database's
// own tooling does that work.
var ErrBoltOnly = errors.New("not available with storage.backend: postgres")

// PostgresOptions are the pool options storage.postgres.* configure.
func PostgresOptions(cfg *config.Config, log *slog.Logger) pgstore.Options {
	p := cfg.Storage.Postgres
	return pgstore.Options{DSN: string(p.DSN), MaxConns: int32(p.MaxConns), MinConns: int32(p.MinConns),
		ConnectTimeout: p.ConnectTimeout.D(), MaxConnLifetime: p.MaxConnLifetime.D(), Log: log}
}

// pgOpenTimeout bounds connecting and migrating at start-up.
const pgOpenTimeout = 2 * time.Minute

// OpenPostgres connects to storage.postgres.dsn and brings the schema up to
// date (one replica at a time). Its errors never hold the DSN.
func OpenPostgres(ctx context.Context, cfg *config.Config, log *slog.Logger) (*pgstore.DB, error) {
	ctx, cancel := context.WithTimeout(ctx, pgOpenTimeout)
	defer cancel()
	db, err := pgstore.Open(ctx, PostgresOptions(cfg, log))
	if err != nil {
		return nil, fmt.Errorf("storage.postgres: %w", err)
	}
	if unfinished, err := UnfinishedMigration(ctx, db); err != nil || unfinished {
		db.Close()
		if err == nil {
			err = errors.New("the database holds an unfinished `herald migrate-storage` copy: run it again with --restart (docs/scaling.md)")
		}
		return nil, fmt.Errorf("storage.postgres: %w", err)
	}
	return db, nil
}

// openStorage opens the database storage.backend names: data_dir/herald.db
// (locked: one Herald at a time), or the PostgreSQL pool of this replica.
func (a *App) openStorage() error {
	if a.cfg.Storage.Backend == config.StoragePostgres {
		pg, err := OpenPostgres(context.Background(), a.cfg, a.log)
		if err != nil {
			return err
		}
		a.db = store.NewPostgres(pg)
		// data_dir keeps what is per node (control socket, TLS material).
		if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
			pg.Close()
			return err
		}
		a.log.Info("storage: PostgreSQL", "replica", replicaName, "max_conns", a.cfg.Storage.Postgres.MaxConns)
		return nil
	}
	var err error
	if a.bdb, err = store.Open(a.cfg.DataDir, 2*time.Second); err != nil {
		return err
	}
	// One group-commit writer for the hot write paths of every service.
	a.db = store.NewBolt(a.bdb)
	a.commit = a.db.Committer()
	if a.dbFile, err = os.Stat(a.bdb.Path()); err != nil {
		a.bdb.Close()
		return err
	}
	return nil
}

// closeStorage closes the database: the bbolt file with its clean-shutdown
// marker (store/clean.go), or the pool.
func (a *App) closeStorage(clean bool) error {
	if a.bdb == nil {
		return a.db.Close()
	}
	return store.Close(a.bdb, clean)
}

// replicaName names this process in metrics and logs: host and pid, as
// pgstore records it holding a periodic job.
var replicaName = func() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", h, os.Getpid())
}()

// openKeysPostgres opens the signing key ring every replica shares, in the
// database (keys.OpenRingDB: the first replica on an empty database makes
// the first key). The bbolt check of data_dir/keys against the key ids the
// database records (openKeys) has no counterpart: keys and invites live in
// one database and are restored together (docs/storage-postgres.md).
func openKeysPostgres(cfg *config.Config, db *store.DB, log *slog.Logger) (*keys.Ring, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgOpenTimeout)
	defer cancel()
	ring, err := keys.OpenRingDB(ctx, db, cfg.ServerName)
	if err != nil {
		return nil, err
	}
	log.Info("signing keys", "keys", len(ring.IDs()), "storage", "postgres")
	return ring, nil
}

// followChanges, on PostgreSQL, runs reload whenever a replica notifies
// channel, and at least every interval when notifications do not arrive
// (Subscribe's fallback), until ctx is done; a failure is logged as what.
func (a *App) followChanges(ctx context.Context, channel string, every time.Duration, what string, reload func(context.Context) error) {
	for range a.db.PG().Subscribe(ctx, channel, every) {
		if err := reload(ctx); err != nil && ctx.Err() == nil {
			a.log.Error(what, "err", err)
		}
	}
}

// periodicJob is a sweep: one pass of it, every period. On bbolt this
// process runs it; on PostgreSQL every replica offers to and one runs it
// per period across the cluster (pgstore.RunPeriodic), so each pass must be
// idempotent.
type periodicJob struct {
	name    string // the job's name in periodic_jobs
	desc    string // what logs call it
	worker  string // the worker readiness tracks ("" none)
	period  time.Duration
	atStart bool // also run once at start (bbolt; on PostgreSQL a job is due at once when it never ran)
	run     func(ctx context.Context) error
}

// periodicJobs is every sweep, in one table: adding one is one line. Each
// run is one pass of a feature package's sweep, which logs what it did.
func (a *App) periodicJobs() []periodicJob {
	jobs := []periodicJob{
		{name: "invite-expiry", desc: "invite expiry sweep", worker: "lifecycle", period: time.Minute, atStart: true, run: a.invites.ExpireSweep},
		{name: "invite-erase", desc: "invite secret erasure", period: time.Minute, atStart: true, run: a.invites.EraseSweep},
		{name: "invite-counts", desc: "invite counter fold", period: time.Minute, run: a.invites.FoldCounts}, // PostgreSQL's delta rows; nothing on bbolt
		{name: "token-expiry", desc: "access token expiry", period: time.Hour, run: a.identity.ExpireTokens},
		{name: "session-sweep", desc: "validation session sweep", period: time.Hour, run: a.identity.SweepSessions},
		{name: "pepper-rotation", desc: "lookup pepper rotation", period: time.Hour, run: a.identity.RotatePepperPeriodic},
	}
	if a.admin != nil {
		jobs = append(jobs, periodicJob{name: "audit-retention", desc: "audit log retention", period: time.Hour, atStart: true, run: a.admin.PruneAuditContext})
	}
	return jobs
}

// startPeriodic runs the table's jobs under background.Run.
func (a *App) startPeriodic(ctx context.Context) { a.runPeriodic(ctx, a.periodicJobs()) }

// runPeriodic runs jobs until ctx is done: on PostgreSQL each under
// pgstore.RunPeriodic, on bbolt every period in this process.
func (a *App) runPeriodic(ctx context.Context, jobs []periodicJob) {
	for _, j := range jobs {
		a.goBackground(ctx, j.worker, j.desc, func(ctx context.Context) error {
			if pg := a.db.PG(); pg != nil {
				pg.RunPeriodic(ctx, pgstore.Job{Name: j.name, Period: j.period, Run: j.run})
				return nil
			}
			pass := func() {
				if err := j.run(ctx); err != nil && ctx.Err() == nil {
					a.log.Error(j.desc, "err", err)
				}
			}
			if j.atStart {
				pass()
			}
			background.Every(ctx, j.period, pass)
			return nil
		})
	}
}

// wakeQueues, on PostgreSQL, wakes this replica's queue workers when any
// replica enqueues (pgqueue's NOTIFY), and at least every queueFallback.
func (a *App) wakeQueues(ctx context.Context) {
	pg := a.db.PG()
	if pg == nil {
		return // one process: Enqueue's caller wakes its own worker
	}
	for name, wake := range map[string]func(){"outbox": a.mail.Wake, "onbind": a.onbind.Wake} {
		a.goBackground(ctx, "", "queue wake-ups "+name, func(ctx context.Context) error {
			pgqueue.WakeOn(ctx, pg, name, queueFallback, wake)
			return nil
		})
	}
}

// queueFallback bounds how long a replica's queue worker goes without
// looking at the queue when notifications do not reach it.
const queueFallback = 10 * time.Second

// pgReadiness is the database's part of /_herald/ready on PostgreSQL: the
// pool answers a ping within a few seconds.
func (a *App) pgReadiness() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := a.db.PG().Pool().Ping(ctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return []string{"PostgreSQL did not answer within 3s"}
	default:
		// The cause (which may name the host) goes to the log, once per
		// change of readiness, not to every prober.
		a.log.Warn("PostgreSQL ping failed", "err", err)
		return []string{"PostgreSQL not reachable (the log says why)"}
	}
}

// Metrics of the replica and of its pool. Every replica serves the
// cluster-wide gauges (queue depths, pending invites, bindings: read from the
// shared database); the counters (requests, sends, attempts) are this
// replica's, and herald_replica_info says which replica answered.
var (
	descReplica      = prometheus.NewDesc("herald_replica_info", "Always 1: the replica answering (host/pid) and its storage backend.", []string{"replica", "backend"}, nil)
	descPoolConns    = prometheus.NewDesc("herald_db_pool_connections", "PostgreSQL connections of this replica's pool, by state (acquired, idle, constructing); max is storage.postgres.max_conns.", []string{"state"}, nil)
	descPoolAcquires = prometheus.NewDesc("herald_db_pool_acquires_total", "Connections taken from this replica's pool, and how many had to wait for one (empty_wait).", []string{"kind"}, nil)
	descPoolWait     = prometheus.NewDesc("herald_db_pool_acquire_wait_seconds_total", "Time spent waiting for a pool connection (a pool too small shows here).", nil, nil)
)

func (a *App) collectReplica(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descReplica, prometheus.GaugeValue, 1, replicaName, string(a.db.Backend()))
	pg := a.db.PG()
	if pg == nil {
		return
	}
	st := pg.Pool().Stat()
	for state, n := range map[string]int32{"acquired": st.AcquiredConns(), "idle": st.IdleConns(),
		"constructing": st.ConstructingConns(), "max": st.MaxConns()} {
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descPoolAcquires, prometheus.CounterValue, float64(st.AcquireCount()), "all")
	ch <- prometheus.MustNewConstMetric(descPoolAcquires, prometheus.CounterValue, float64(st.EmptyAcquireCount()), "empty_wait")
	ch <- prometheus.MustNewConstMetric(descPoolWait, prometheus.CounterValue, st.AcquireDuration().Seconds())
}

// dbSize is the size of the bbolt file, or of the PostgreSQL database.
func (a *App) dbSize() (int64, error) {
	var size int64
	if pg := a.db.PG(); pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := pg.Pool().QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&size)
		return size, err
	}
	err := a.db.View(func(tx *store.Tx) error { size = tx.Bolt.Size(); return nil })
	return size, err
}

// MigrationTable records a `herald migrate-storage` copy in the target
// database: created by the command (not a schema migration: a database
// Herald created itself never has it), one row, finished set once the copy
// is verified. A replica refuses to start on a database whose copy is
// unfinished, so nobody serves a half-copied database.
const MigrationTable = "herald_migrate_storage"

// UnfinishedMigration says whether db holds a migrate-storage copy that did
// not finish.
func UnfinishedMigration(ctx context.Context, db *pgstore.DB) (bool, error) {
	var unfinished bool
	err := db.Pool().QueryRow(ctx, `SELECT to_regclass('`+MigrationTable+`') IS NOT NULL`).Scan(&unfinished)
	if err != nil || !unfinished {
		return false, err
	}
	err = db.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+MigrationTable+` WHERE finished IS NULL)`).Scan(&unfinished)
	return unfinished, err
}
