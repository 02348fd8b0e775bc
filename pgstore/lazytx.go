package pgstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lazyPool begins InTx's transactions lazily: BeginTx costs no round trip,
// and BEGIN goes to the server in one batch with the transaction's first
// statement (pgx.Batch.BeginTx), saving the round trip pgx.Conn.BeginTx
// spends on it. PostgreSQL takes a transaction's snapshot at its first
// statement, not at BEGIN, so the transaction sees exactly what it would
// have seen begun eagerly.
type lazyPool struct{ p *pgxpool.Pool }

func (l lazyPool) BeginTx(_ context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	return &lazyTx{p: l.p, opts: opts}, nil
}

// lazyTx is a transaction not begun until its first statement. Exec,
// QueryRow and SendBatch take BEGIN along in their round trip; the other
// methods begin it first on their own. A transaction that ran no statement
// commits and rolls back as nothing.
type lazyTx struct {
	p    *pgxpool.Pool
	opts pgx.TxOptions
	tx   pgx.Tx // once begun
	done bool   // committed or rolled back before it began
}

// send sends b, BEGIN first: the transaction is begun (or closed, if BEGIN
// failed) by the time its first result is read, which send does.
func (l *lazyTx) send(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	all := &pgx.Batch{}
	all.BeginTx(l.opts)
	all.QueuedQueries = append(all.QueuedQueries, b.QueuedQueries...)
	br := l.p.SendBatch(ctx, all)
	l.tx = br.Tx()
	br.Exec() // BEGIN's result; an error of it comes from every later read of br
	return br
}

func (l *lazyTx) begin(ctx context.Context) error {
	if l.tx != nil {
		return nil
	}
	if l.done {
		return pgx.ErrTxClosed
	}
	tx, err := l.p.BeginTx(ctx, l.opts)
	if err != nil {
		return err
	}
	l.tx = tx
	return nil
}

func (l *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if l.tx != nil || l.done {
		if err := l.begin(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return l.tx.Exec(ctx, sql, args...)
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
	if l.tx != nil || l.done {
		if err := l.begin(ctx); err != nil {
			return errRow{err}
		}
		return l.tx.QueryRow(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := l.send(ctx, b)
	return closingRow{row: br.QueryRow(), br: br}
}

func (l *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if l.tx != nil || l.done {
		if err := l.begin(ctx); err != nil {
			return pgx.FailedBatchResults(b, err)
		}
		return l.tx.SendBatch(ctx, b)
	}
	return l.send(ctx, b)
}

func (l *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := l.begin(ctx); err != nil {
		return nil, err
	}
	return l.tx.Query(ctx, sql, args...)
}

func (l *lazyTx) CopyFrom(ctx context.Context, t pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := l.begin(ctx); err != nil {
		return 0, err
	}
	return l.tx.CopyFrom(ctx, t, cols, src)
}

func (l *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := l.begin(ctx); err != nil {
		return nil, err
	}
	return l.tx.Begin(ctx)
}

func (l *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := l.begin(ctx); err != nil {
		return nil, err
	}
	return l.tx.Prepare(ctx, name, sql)
}

// LargeObjects and Conn need a begun transaction and take no context: they
// begin it under a background context.
func (l *lazyTx) LargeObjects() pgx.LargeObjects {
	if err := l.begin(context.Background()); err != nil {
		return pgx.LargeObjects{}
	}
	return l.tx.LargeObjects()
}

func (l *lazyTx) Conn() *pgx.Conn {
	if err := l.begin(context.Background()); err != nil {
		return nil
	}
	return l.tx.Conn()
}

func (l *lazyTx) Commit(ctx context.Context) error {
	if l.tx == nil {
		if l.done {
			return pgx.ErrTxClosed
		}
		l.done = true
		return nil
	}
	return l.tx.Commit(ctx)
}

func (l *lazyTx) Rollback(ctx context.Context) error {
	if l.tx == nil {
		if l.done {
			return pgx.ErrTxClosed
		}
		l.done = true
		return nil
	}
	return l.tx.Rollback(ctx)
}

// closingRow is the last result of a batch: scanning it closes the batch.
type closingRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r closingRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil && cerr != nil && !errors.Is(cerr, pgx.ErrNoRows) {
		return cerr
	}
	return err
}

// errRow is a QueryRow that was not sent.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
