package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
//     retries run out). CommitWith may ask for READ COMMITTED on
//     PostgreSQL instead (TxOptions): only for a function whose
//     correctness rests on unique constraints, row locks and advisory
//     locks that it takes itself, and which says so.
//   - A write transaction on PostgreSQL may hold statements back: Tx.Exec
//     queues a write whose result is not needed, and the queued writes go
//     to the server in one round trip (a pgx.Batch) before the next
//     statement of the transaction or its commit, in the order they were
//     queued. An error of a queued write surfaces at that moment. On bbolt,
//     and in transactions not opened by DB, Tx.Exec runs at once.
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
	// queued holds the writes of Exec not yet sent (PostgreSQL write
	// transactions opened by DB only; nil elsewhere).
	queued *pgx.Batch
	raw    pgx.Tx // the transaction PG wraps when writes are queued
	// flushErr is the error of the queued writes once sent: the
	// transaction is aborted from then on, and its commit fails with it.
	flushErr error
}

// Exec runs a PostgreSQL write whose result the caller does not need. In a
// write transaction of DB it is queued and sent with the other queued
// writes in one round trip before the transaction's next statement or its
// commit (see DB); elsewhere it runs at once. Use it only for a statement
// whose failure fails the transaction (its error comes later, from another
// call or from the commit).
func (t *Tx) Exec(sql string, args ...any) error {
	if t.PG == nil {
		return errors.New("store: Tx.Exec on bbolt")
	}
	if t.queued == nil {
		_, err := t.PG.Exec(t.Context(), sql, args...)
		return err
	}
	t.queued.Queue(sql, args...)
	return nil
}

// Flush sends the queued writes now (nothing to do when none are queued).
// DB flushes before every other statement of the transaction and before
// its commit, so callers need not.
func (t *Tx) Flush() error {
	if t.flushErr != nil || t.queued == nil || t.queued.Len() == 0 {
		return t.flushErr
	}
	b := t.queued
	t.queued = &pgx.Batch{}
	t.flushErr = t.raw.SendBatch(t.Context(), b).Close()
	return t.flushErr
}

// flushingTx is a write transaction's pgx.Tx that sends the queued writes
// (Tx.Exec) before any statement of its own, so reads see them and
// statements keep their order.
type flushingTx struct {
	pgx.Tx
	t *Tx
}

func (f flushingTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := f.t.Flush(); err != nil {
		return pgconn.CommandTag{}, err
	}
	return f.Tx.Exec(ctx, sql, args...)
}

func (f flushingTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := f.t.Flush(); err != nil {
		return nil, err
	}
	return f.Tx.Query(ctx, sql, args...)
}

func (f flushingTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := f.t.Flush(); err != nil {
		return errRow{err}
	}
	return f.Tx.QueryRow(ctx, sql, args...)
}

// SendBatch after a failed flush goes to an aborted transaction, which
// refuses it; the flush's own error comes from the commit.
func (f flushingTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	_ = f.t.Flush()
	return f.Tx.SendBatch(ctx, b)
}

func (f flushingTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := f.t.Flush(); err != nil {
		return 0, err
	}
	return f.Tx.CopyFrom(ctx, table, cols, src)
}

func (f flushingTx) Commit(ctx context.Context) error {
	if err := f.t.Flush(); err != nil {
		return err
	}
	return f.Tx.Commit(ctx)
}

// errRow is a QueryRow whose statement was not sent: a queued write failed.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

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

// TxOptions choose how CommitWith runs a write transaction. bbolt ignores
// them (its single writer is serializable).
type TxOptions struct {
	// ReadCommitted runs the transaction at READ COMMITTED on PostgreSQL
	// instead of SERIALIZABLE. Only for a function that does not rely on
	// serializability: every decision it takes from a read must be kept
	// true until its commit by a unique constraint (an INSERT ... ON
	// CONFLICT), a row lock (SELECT ... FOR UPDATE) or an advisory lock
	// that every conflicting writer takes too. A serialization failure
	// cannot happen then, but a deadlock still runs the function again.
	ReadCommitted bool
	// SerializeOn runs the transactions given the same name one at a time
	// across replicas (pgstore.TxOptions.SerializeOn): for writers that all
	// update one row, such as the lookup index's generation.
	SerializeOn string
}

// CommitWith is CommitContext with the options o (see TxOptions). On bbolt
// it is CommitContext.
func (d *DB) CommitWith(ctx context.Context, o TxOptions, fn func(*Tx) error) error {
	if d.pg == nil {
		return d.CommitContext(ctx, fn)
	}
	iso := pgx.Serializable
	if o.ReadCommitted {
		iso = pgx.ReadCommitted
	}
	return d.pgWriteAt(ctx, pgstore.TxOptions{TxOptions: pgx.TxOptions{IsoLevel: iso}, SerializeOn: o.SerializeOn}, fn)
}

func (d *DB) pgWrite(ctx context.Context, fn func(*Tx) error) error {
	return d.pgWriteAt(ctx, pgstore.TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.Serializable}}, fn)
}

func (d *DB) pgWriteAt(ctx context.Context, opts pgstore.TxOptions, fn func(*Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	var t *Tx
	err := d.pg.InTx(ctx, opts, func(tx pgx.Tx) error {
		// Hooks and queued writes of an earlier run are dropped.
		t = &Tx{ctx: ctx, writable: true, queued: &pgx.Batch{}, raw: tx}
		t.PG = flushingTx{Tx: tx, t: t}
		if err := fn(t); err != nil {
			return err
		}
		return t.Flush()
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
