package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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
//     queued. An error of a queued write surfaces at that moment. The
//     writes still queued when the function returns go with COMMIT, in
//     its round trip (Tx.FlushWithCommit), and BEGIN goes with the first
//     statement (pgstore.InTx). On bbolt, and in transactions not opened
//     by DB or PGTxQueued, Tx.Exec runs at once.
//   - ReadOne runs a read that is one statement, or one pgx.Batch of
//     independent reads, without BEGIN and COMMIT: on PostgreSQL straight
//     on the pool, each statement its own snapshot (on bbolt a View). A
//     single statement is as consistent as in View. Several statements,
//     queued together (Tx.QueueRow) or one after another, are NOT one
//     snapshot: each may see commits the one before did not. Use ReadOne
//     only where that does not matter, and say why at the call: a check
//     that a write transaction makes again under its own locks, a read
//     whose parts are independent facts, or a single-row read.
//   - Tx.QueueRow queues a read like Exec queues a write: it goes to the
//     server with the transaction's next round trip (ReadOne's, or a write
//     transaction's), and its function gets the row then. A QueryRow of a
//     transaction of DB joins what is queued, so queued writes and reads
//     and the statement whose row the caller waits for take one round trip.
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
	// readOne marks ReadOne's Tx: no transaction, reads only.
	readOne bool
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
	if t.readOne {
		return ErrReadOnly
	}
	if t.queued == nil {
		_, err := t.PG.Exec(t.Context(), sql, args...)
		return err
	}
	t.queued.Queue(sql, args...)
	return nil
}

// QueueRow queues a read of one row on PostgreSQL: the statement goes to
// the server with the transaction's next round trip (Flush, the next
// statement, the commit, or the end of ReadOne's function), and scan gets
// its row then (pgx.ErrNoRows from Scan when there is none); an error scan
// returns becomes the error of that round trip. Where nothing is queued
// (transactions not opened by DB's ReadOne, Commit, Update or CommitWith)
// the read runs at once. On bbolt it is an error: read bbolt directly.
func (t *Tx) QueueRow(scan func(pgx.Row) error, sql string, args ...any) error {
	if t.PG == nil {
		return errors.New("store: Tx.QueueRow on bbolt")
	}
	if t.queued == nil {
		return scan(t.PG.QueryRow(t.Context(), sql, args...))
	}
	t.queued.Queue(sql, args...).QueryRow(scan)
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

// FlushWithCommit is Flush at the end of a write function: when the
// transaction can send writes with its COMMIT (pgstore.BatchCommitter:
// pgstore.InTx's transactions on the pool) the queued writes are handed to
// it and go in the commit's round trip, their error the commit's;
// otherwise they are sent now. Call it last: nothing may run on the
// transaction after it but the commit.
func (t *Tx) FlushWithCommit() error {
	if t.flushErr != nil || t.queued == nil || t.queued.Len() == 0 {
		return t.flushErr
	}
	if bc, ok := t.raw.(pgstore.BatchCommitter); ok {
		bc.CommitWith(t.queued)
		t.queued = &pgx.Batch{}
		return nil
	}
	return t.Flush()
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

// QueryRow sends what is queued and this statement in one round trip: the
// queued statements' results are read first (an error among them is the
// transaction's, as Flush's), then the row is the caller's to scan, and the
// batch is closed when it is scanned.
func (f flushingTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	t := f.t
	if t.flushErr != nil {
		return errRow{t.flushErr}
	}
	if t.queued == nil || t.queued.Len() == 0 {
		return f.Tx.QueryRow(ctx, sql, args...)
	}
	b := t.queued
	t.queued = &pgx.Batch{}
	n := b.Len()
	b.Queue(sql, args...)
	br := t.raw.SendBatch(ctx, b)
	for _, qq := range b.QueuedQueries[:n] {
		var err error
		if qq.Fn != nil {
			err = qq.Fn(br)
		} else {
			_, err = br.Exec()
		}
		if err != nil {
			if cerr := br.Close(); cerr != nil && !errors.Is(err, cerr) {
				err = errors.Join(err, cerr)
			}
			t.flushErr = err
			return errRow{err}
		}
	}
	return batchRow{row: br.QueryRow(), br: br}
}

// batchRow is the last statement of a batch: scanning it closes the batch.
type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil && cerr != nil {
		return cerr
	}
	return err
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

// PGTxQueued is PGTx with DB's queueing: Tx.Exec queues its writes and
// Tx.QueueRow its reads, sent with the transaction's next statement (a
// QueryRow takes them along in its round trip) or by Flush. The owner
// must call Flush before it commits tx: an error of a queued write comes
// from there at the latest.
func PGTxQueued(ctx context.Context, tx pgx.Tx) *Tx {
	t := &Tx{ctx: ctx, writable: true, queued: &pgx.Batch{}, raw: tx}
	t.PG = flushingTx{Tx: tx, t: t}
	return t
}

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

// ReadOne runs fn, a read of one statement or of one batch of independent
// reads (Tx.QueueRow, sent when fn returns or before its next statement),
// without a transaction: on PostgreSQL straight on the pool, saving the
// round trips of BEGIN and COMMIT; on bbolt it is ViewContext. Each
// statement is its own snapshot, so several statements are not one
// snapshot (see DB for when that is allowed). Writes are refused
// (ErrReadOnly) and fn runs once.
func (d *DB) ReadOne(ctx context.Context, fn func(*Tx) error) error {
	if d.pg == nil {
		return d.ViewContext(ctx, fn)
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	t := &Tx{ctx: ctx, readOne: true, queued: &pgx.Batch{}, raw: poolReader{d.pg.Pool()}}
	t.PG = flushingTx{Tx: t.raw, t: t}
	if err := fn(t); err != nil {
		return err
	}
	return t.Flush()
}

// poolReader is ReadOne's pgx.Tx: reads go straight to the pool, each
// statement on whichever connection the pool gives (autocommit). Writes,
// transactions and the rest of a connection's state are refused.
type poolReader struct{ p *pgxpool.Pool }

func (r poolReader) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return r.p.Query(ctx, sql, args...)
}

func (r poolReader) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return r.p.QueryRow(ctx, sql, args...)
}

func (r poolReader) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return r.p.SendBatch(ctx, b)
}

func (poolReader) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, ErrReadOnly
}

func (poolReader) CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error) {
	return 0, ErrReadOnly
}

func (poolReader) Begin(context.Context) (pgx.Tx, error) { return nil, errNoTx }
func (poolReader) Commit(context.Context) error          { return errNoTx }
func (poolReader) Rollback(context.Context) error        { return nil }
func (poolReader) LargeObjects() pgx.LargeObjects        { return pgx.LargeObjects{} }
func (poolReader) Conn() *pgx.Conn                       { return nil }
func (poolReader) Prepare(context.Context, string, string) (*pgconn.StatementDescription, error) {
	return nil, errNoTx
}

var errNoTx = errors.New("store: ReadOne runs no transaction")

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
		return t.FlushWithCommit()
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
