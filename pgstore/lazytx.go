package pgstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lazyPool begins InTx's transactions lazily: BeginTx costs no round trip
// (and takes no connection yet); BEGIN goes to the server in one batch with
// the transaction's first statement, and COMMIT in one batch with the
// writes handed to CommitWith, saving the two round trips pgx spends on
// BEGIN and COMMIT of their own. PostgreSQL takes a transaction's snapshot
// at its first statement, not at BEGIN, so the transaction sees exactly
// what it would have seen begun eagerly.
type lazyPool struct{ p *pgxpool.Pool }

func (l lazyPool) BeginTx(_ context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	return &lazyTx{p: l.p, opts: opts}, nil
}

// BatchCommitter is a transaction of InTx that can send writes with its
// COMMIT: CommitWith hands it b, which the commit sends, then COMMIT, in
// one round trip; an error of b's statements is the commit's error.
type BatchCommitter interface {
	CommitWith(b *pgx.Batch)
}

// lazyTx is a transaction on a pool connection of its own, not begun until
// its first statement. Exec, Query, QueryRow and SendBatch take BEGIN along
// in their round trip; the rest begin it first on their own. A
// transaction that ran no statement commits and rolls back as nothing.
type lazyTx struct {
	p      *pgxpool.Pool
	opts   pgx.TxOptions
	c      *pgxpool.Conn // from the first statement to the end
	begun  bool
	closed bool
	final  *pgx.Batch // CommitWith's writes
}

var _ BatchCommitter = (*lazyTx)(nil)

// beginSQL is BEGIN with the transaction's options, as pgx writes it.
func (l *lazyTx) beginSQL() string {
	b := &pgx.Batch{}
	b.BeginTx(l.opts)
	return b.QueuedQueries[0].SQL
}

func (l *lazyTx) conn(ctx context.Context) error {
	if l.closed {
		return pgx.ErrTxClosed
	}
	if l.c != nil {
		return nil
	}
	c, err := l.p.Acquire(ctx)
	if err != nil {
		return err
	}
	l.c = c
	return nil
}

// prepend returns b with BEGIN first when the transaction is not begun
// yet (and counts it begun: the server begins it before b's first
// statement runs, or fails the whole batch).
func (l *lazyTx) prepend(b *pgx.Batch) (*pgx.Batch, bool) {
	if l.begun {
		return b, false
	}
	l.begun = true
	all := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+1)}
	all.Queue(l.beginSQL())
	all.QueuedQueries = append(all.QueuedQueries, b.QueuedQueries...)
	return all, true
}

// begin begins the transaction with a round trip of its own (for the
// statements that cannot go in a batch).
func (l *lazyTx) begin(ctx context.Context) error {
	if err := l.conn(ctx); err != nil {
		return err
	}
	if l.begun {
		return nil
	}
	l.begun = true
	_, err := l.c.Exec(ctx, l.beginSQL())
	return err
}

// send sends b on the transaction's connection, BEGIN first if needed, and
// reads BEGIN's result.
func (l *lazyTx) send(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := l.conn(ctx); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	all, withBegin := l.prepend(b)
	br := l.c.SendBatch(ctx, all)
	if withBegin {
		br.Exec() // an error of BEGIN comes from every later read of br
	}
	return br
}

func (l *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if l.begun {
		if err := l.conn(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return l.c.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := l.send(ctx, b)
	ct, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return ct, err
}

func (l *lazyTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if l.begun {
		if err := l.conn(ctx); err != nil {
			return errRow{err}
		}
		return l.c.QueryRow(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := l.send(ctx, b)
	return closingRow{row: br.QueryRow(), br: br}
}

func (l *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return l.send(ctx, b)
}

func (l *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if l.begun {
		if err := l.conn(ctx); err != nil {
			return nil, err
		}
		return l.c.Query(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := l.send(ctx, b)
	rows, err := br.Query()
	if err != nil {
		if rows != nil {
			rows.Close()
		}
		br.Close()
		return nil, err
	}
	return &closingRows{Rows: rows, br: br}, nil
}

// closingRows are the rows of a batch's last statement: the batch is
// closed (its end read from the connection) when the rows are done, by
// Close or by Next's last call, as pgx's own rows close themselves.
type closingRows struct {
	pgx.Rows
	br   pgx.BatchResults
	done bool
	err  error
}

func (r *closingRows) finish() {
	if !r.done {
		r.done = true
		r.Rows.Close()
		r.err = r.br.Close()
	}
}

func (r *closingRows) Next() bool {
	if r.done {
		return false
	}
	if r.Rows.Next() {
		return true
	}
	r.finish()
	return false
}

func (r *closingRows) Close() { r.finish() }

func (r *closingRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

func (l *lazyTx) CopyFrom(ctx context.Context, t pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := l.begin(ctx); err != nil {
		return 0, err
	}
	return l.c.CopyFrom(ctx, t, cols, src)
}

// Begin (a savepoint) is not offered: nothing in Herald nests
// transactions.
func (l *lazyTx) Begin(context.Context) (pgx.Tx, error) {
	return nil, errors.New("pgstore: no savepoints in InTx's transactions")
}

func (l *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := l.begin(ctx); err != nil {
		return nil, err
	}
	return l.c.Conn().Prepare(ctx, name, sql)
}

// LargeObjects are not offered (Herald stores none).
func (l *lazyTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

// Conn begins the transaction (under a background context: Conn takes
// none) and is its connection.
func (l *lazyTx) Conn() *pgx.Conn {
	if err := l.begin(context.Background()); err != nil {
		return nil
	}
	return l.c.Conn()
}

func (l *lazyTx) CommitWith(b *pgx.Batch) { l.final = b }

// Commit sends CommitWith's writes and COMMIT in one round trip (BEGIN too,
// if nothing ran before). A transaction that wrote nothing and ran nothing
// has nothing to commit.
func (l *lazyTx) Commit(ctx context.Context) error {
	if l.closed {
		return pgx.ErrTxClosed
	}
	if !l.begun && (l.final == nil || l.final.Len() == 0) {
		l.end()
		return nil
	}
	b := l.final
	if b == nil {
		b = &pgx.Batch{}
	}
	l.final = nil
	var rolledBack bool
	b.Queue("commit").Exec(func(ct pgconn.CommandTag) error {
		rolledBack = ct.String() == "ROLLBACK"
		return nil
	})
	br := l.send(ctx, b)
	err := br.Close()
	if err == nil && rolledBack {
		err = pgx.ErrTxCommitRollback
	}
	if err != nil && l.c != nil && l.c.Conn().PgConn().TxStatus() != 'I' && !l.c.Conn().IsClosed() {
		// A write of the batch failed: the server skipped the COMMIT.
		_, _ = l.c.Exec(ctx, "rollback")
	}
	l.end()
	return err
}

func (l *lazyTx) Rollback(ctx context.Context) error {
	if l.closed {
		return pgx.ErrTxClosed
	}
	var err error
	if l.begun && l.c != nil && !l.c.Conn().IsClosed() {
		_, err = l.c.Exec(ctx, "rollback")
	}
	l.end()
	return err
}

// end gives the connection back (the pool drops one left in a
// transaction or broken).
func (l *lazyTx) end() {
	l.closed = true
	if l.c != nil {
		l.c.Release()
		l.c = nil
	}
}

// closingRow is the last result of a batch: scanning it closes the batch.
type closingRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r closingRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil && cerr != nil {
		return cerr
	}
	return err
}

// errRow is a QueryRow that was not sent.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
