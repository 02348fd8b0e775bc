package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/pgstore"
)

// Backend names a storage engine (the storage.backend configuration key).
type Backend string

const (
	// BackendBolt is the embedded default: one bbolt file in data_dir, one
	// Herald process.
	BackendBolt Backend = "bbolt"
	// BackendPostgres is a shared PostgreSQL database: any number of Herald
	// replicas on one database.
	BackendPostgres Backend = "postgres"
)

// DB is Herald's database on either backend. Feature packages run their
// reads and writes through it and receive a *Tx; each feature keeps its own
// storage code for each backend behind an interface it owns, choosing the
// implementation once from Backend().
//
// The two backends give the same guarantees to the functions they run:
//   - View sees one consistent snapshot (a bbolt read transaction; on
//     PostgreSQL a READ ONLY REPEATABLE READ transaction).
//   - Update and Commit are serializable, as bbolt's single writer is (on
//     PostgreSQL a SERIALIZABLE transaction, run again after a
//     serialization failure or deadlock, pgstore.ErrContention when the
//     retries run out).
//   - A write function may run more than once (Committer groups on bbolt,
//     retries on PostgreSQL): it must do nothing outside the transaction
//     (no mail, no HTTP) and write only what it would write on any run.
//     Work that must follow the commit goes in Tx.OnCommit.
type DB struct {
	bolt   *bolt.DB
	commit *Committer
	pg     *pgstore.DB
	// Timeout bounds a PostgreSQL transaction started without a context
	// (View, Update, Commit). Default 30 s.
	Timeout time.Duration
}

// NewBolt wraps an open bbolt database (see Open). Commit groups writes
// through a Committer.
func NewBolt(db *bolt.DB) *DB {
	return &DB{bolt: db, commit: NewCommitter(db)}
}

// NewBoltWith wraps db with an existing Committer (one per file: its groups
// are what make concurrent writers cheap).
func NewBoltWith(db *bolt.DB, c *Committer) *DB {
	return &DB{bolt: db, commit: c}
}

// NewPostgres wraps an open PostgreSQL pool whose schema is up to date.
func NewPostgres(db *pgstore.DB) *DB { return &DB{pg: db} }

// Backend says which engine this is.
func (d *DB) Backend() Backend {
	if d.pg != nil {
		return BackendPostgres
	}
	return BackendBolt
}

// Bolt is the bbolt database (nil on PostgreSQL). Code that uses it directly
// is bbolt-only by nature (backup, integrity checks, page statistics).
func (d *DB) Bolt() *bolt.DB { return d.bolt }

// Committer is the bbolt group committer (nil on PostgreSQL).
func (d *DB) Committer() *Committer { return d.commit }

// PG is the PostgreSQL pool (nil on bbolt).
func (d *DB) PG() *pgstore.DB { return d.pg }

// Tx is one transaction on either backend: exactly one of Bolt and PG is set.
type Tx struct {
	// Bolt is the bbolt transaction (nil on PostgreSQL).
	Bolt *bolt.Tx
	// PG is the PostgreSQL transaction (nil on bbolt).
	PG pgx.Tx

	ctx      context.Context
	writable bool
	onCommit []func()
}

// BoltTx wraps a bbolt transaction opened outside a DB (imports, tests).
func BoltTx(tx *bolt.Tx) *Tx { return &Tx{Bolt: tx, writable: tx.Writable()} }

// PGTx wraps a PostgreSQL transaction opened outside a DB (a queue
// backend's own writes, imports).
func PGTx(ctx context.Context, tx pgx.Tx) *Tx { return &Tx{PG: tx, ctx: ctx, writable: true} }

// Committed runs the OnCommit functions of a transaction opened outside a
// DB (PGTx) once its owner committed it; DB's own transactions run them
// themselves.
func (t *Tx) Committed() {
	fns := t.onCommit
	t.onCommit = nil
	for _, f := range fns {
		f()
	}
}

// Context is the transaction's context: statements on PostgreSQL run under
// it.
func (t *Tx) Context() context.Context {
	if t.ctx == nil {
		return context.Background()
	}
	return t.ctx
}

// Writable says the transaction may write.
func (t *Tx) Writable() bool { return t.writable }

// OnCommit runs fn after the transaction commits (never if it rolls back,
// and only once however often the function ran).
func (t *Tx) OnCommit(fn func()) {
	if t.Bolt != nil {
		t.Bolt.OnCommit(fn)
		return
	}
	t.onCommit = append(t.onCommit, fn)
}

// ErrReadOnly is returned by a write through a View transaction.
var ErrReadOnly = errors.New("store: write in a read-only transaction")

func (d *DB) timeout() time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return 30 * time.Second
}

// View runs fn in a read-only snapshot.
func (d *DB) View(fn func(*Tx) error) error {
	return d.ViewContext(context.Background(), fn)
}

// ViewContext is View under ctx (PostgreSQL statements are cancelled with it).
func (d *DB) ViewContext(ctx context.Context, fn func(*Tx) error) error {
	if d.pg == nil {
		return d.bolt.View(func(tx *bolt.Tx) error { return fn(&Tx{Bolt: tx, ctx: ctx}) })
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	opts := pgstore.TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}}
	return d.pg.InTx(ctx, opts, func(tx pgx.Tx) error { return fn(&Tx{PG: tx, ctx: ctx}) })
}

// Update runs fn in a serializable write transaction and commits it. On
// bbolt it is bbolt's own Update (fn runs once); on PostgreSQL fn may run
// more than once (see DB).
func (d *DB) Update(fn func(*Tx) error) error {
	return d.UpdateContext(context.Background(), fn)
}

// UpdateContext is Update under ctx.
func (d *DB) UpdateContext(ctx context.Context, fn func(*Tx) error) error {
	if d.pg == nil {
		return d.bolt.Update(func(tx *bolt.Tx) error { return fn(&Tx{Bolt: tx, ctx: ctx, writable: true}) })
	}
	return d.pgWrite(ctx, fn)
}

// Commit runs fn in a write transaction like Update, grouped with other
// writers' functions on bbolt (one fsync for a group; see Committer). fn may
// run more than once on both backends.
func (d *DB) Commit(fn func(*Tx) error) error {
	return d.CommitContext(context.Background(), fn)
}

// CommitContext is Commit under ctx.
func (d *DB) CommitContext(ctx context.Context, fn func(*Tx) error) error {
	if d.pg == nil {
		return d.commit.Do(func(tx *bolt.Tx) error { return fn(&Tx{Bolt: tx, ctx: ctx, writable: true}) })
	}
	return d.pgWrite(ctx, fn)
}

func (d *DB) pgWrite(ctx context.Context, fn func(*Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	var t *Tx
	opts := pgstore.TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.Serializable}}
	err := d.pg.InTx(ctx, opts, func(tx pgx.Tx) error {
		t = &Tx{PG: tx, ctx: ctx, writable: true} // hooks of an earlier run are dropped
		return fn(t)
	})
	if err != nil {
		return err
	}
	for _, f := range t.onCommit {
		f()
	}
	return nil
}

// Close closes the database (the bbolt file, or the PostgreSQL pool). A
// server closes its bbolt file through store.Close instead, which records a
// clean shutdown.
func (d *DB) Close() error {
	if d.pg != nil {
		d.pg.Close()
		return nil
	}
	return d.bolt.Close()
}
