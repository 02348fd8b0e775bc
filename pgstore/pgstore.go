// Package pgstore holds what Herald's PostgreSQL storage is built on: a
// connection pool, embedded schema migrations run under an advisory lock, a
// transaction helper that retries serialization failures and deadlocks,
// cluster-wide periodic jobs (one replica runs each sweep per period) and
// LISTEN/NOTIFY "something changed" signals with a polling fallback.
//
// The server opens it when storage.backend is postgres
// (internal/server/storage.go); the queue backend (package pgqueue) and the
// feature packages' PostgreSQL storage are built on it. docs/scaling.md
// describes the architecture.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Options configure Open. Zero values take the defaults named on each field.
type Options struct {
	// DSN is a libpq connection string or URL
	// ("postgres://herald@db/herald?sslmode=verify-full").
	DSN string
	// MaxConns bounds the pool (default 10). Each replica also holds one
	// connection per Subscribe outside the pool, and a periodic job holds a
	// pool connection while it runs.
	MaxConns int32
	// MinConns are kept open even when idle (default 0).
	MinConns int32
	// MaxConnLifetime closes a connection after this long, so connections
	// move to a new primary or a rebalanced pooler (default 30m).
	MaxConnLifetime time.Duration
	// MaxConnIdleTime closes a connection idle this long (default 5m).
	MaxConnIdleTime time.Duration
	// ConnectTimeout bounds each new connection (default 5s).
	ConnectTimeout time.Duration
	// Log receives warnings (a lost lock, a listener reconnecting). Never
	// the DSN: it may hold a password. Default: discard.
	Log *slog.Logger

	// migrations replaces the embedded migrations (tests).
	migrations fs.FS
}

// DB is an open pool whose schema is up to date.
type DB struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	// jobMu lets one periodic job at a time run on this replica: a running
	// job holds a pool connection for its lock and takes more for its work,
	// so several due at once (every job on a new database) could take the
	// whole pool and wait on each other until their transactions time out.
	jobMu sync.Mutex
	// serial holds a mutex per TxOptions.SerializeOn name.
	serial sync.Map

	// owner is this replica's owner number, locked on a connection of
	// its own (owner.go); stopOwner ends that, ownerDone says it ended.
	owner     int32
	stopOwner context.CancelFunc
	ownerDone chan struct{}
}

// Open connects, checks the server answers and applies pending migrations
// (one replica at a time, under an advisory lock). It refuses a database
// whose schema is newer than this binary knows (ErrSchemaNewer).
func Open(ctx context.Context, opts Options) (*DB, error) {
	cfg, err := poolConfig(opts)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	db := &DB{pool: pool, log: opts.Log}
	if db.log == nil {
		db.log = slog.New(slog.DiscardHandler)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect: %w", err)
	}
	fsys := opts.migrations
	if fsys == nil {
		fsys = embedded
	}
	if err := migrate(ctx, pool, fsys); err != nil {
		pool.Close()
		return nil, err
	}
	if err := db.takeOwner(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return db, nil
}

// poolConfig parses the DSN and applies the sizing options. Its errors never
// repeat the DSN.
func poolConfig(opts Options) (*pgxpool.Config, error) {
	if opts.DSN == "" {
		return nil, errors.New("pgstore: no DSN")
	}
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		// pgx's parse errors redact the password but may still echo the
		// string; name the problem only.
		return nil, errors.New("pgstore: the DSN is not a valid PostgreSQL connection string")
	}
	if opts.MaxConns < 0 || opts.MinConns < 0 || (opts.MaxConns > 0 && opts.MinConns > opts.MaxConns) {
		return nil, fmt.Errorf("pgstore: pool sizes: min %d, max %d", opts.MinConns, opts.MaxConns)
	}
	cfg.MaxConns = 10
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.MinConns = opts.MinConns
	cfg.MaxConnLifetime = orDefault(opts.MaxConnLifetime, 30*time.Minute)
	cfg.MaxConnIdleTime = orDefault(opts.MaxConnIdleTime, 5*time.Minute)
	cfg.ConnConfig.ConnectTimeout = orDefault(opts.ConnectTimeout, 5*time.Second)
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "herald"
	}
	cfg.AfterConnect = checkClient
	return cfg, nil
}

// checkClient asks the server to check, while a statement runs, that this
// client is still there. Without it the statement of a replica that died (a
// migration, a sweep) runs to its end holding its locks and transaction;
// with it the server ends it within clientCheckInterval. PostgreSQL has the
// setting from version 14, on Linux servers; where it is missing or
// unsupported the server just checks at the statement's end, as before.
func checkClient(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "SET client_connection_check_interval = "+clientCheckInterval)
	var pg *pgconn.PgError
	if errors.As(err, &pg) && (pg.Code == "42704" || pg.Code == "22023") { // undefined_object, invalid_parameter_value
		return nil
	}
	return err
}

// clientCheckInterval is how often the server checks for a vanished client
// during a statement.
const clientCheckInterval = "'2s'"

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Pool is the connection pool, for the storage built on this package.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Close closes the pool, waiting for connections in use to be returned.
// The owner lock goes first, so other replicas may take this replica's
// claims as soon as it stops.
func (db *DB) Close() {
	if db.stopOwner != nil {
		db.stopOwner()
		<-db.ownerDone
	}
	db.pool.Close()
}

// detached is ctx without its cancellation, bounded by a short timeout: for
// clean-up (unlock, close, record a finished run) that must happen even
// while the caller is shutting down, but must not hang on a dead server.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}
