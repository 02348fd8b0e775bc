package pgstore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/internal/pgtest"
)

// InTx begins its transaction with the first statement, whichever kind of
// statement that is: the transaction has the options asked for, its
// statements are atomic, and a transaction that ran nothing commits as
// nothing. Every connection goes back to the pool.
func TestInTxBeginsWithTheFirstStatement(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE lazy (k int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	rr := TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.RepeatableRead}}
	level := func(tx pgx.Tx) (string, error) {
		var l string
		err := tx.QueryRow(ctx, "SHOW transaction_isolation").Scan(&l)
		return l, err
	}
	firsts := map[string]func(tx pgx.Tx) error{
		"QueryRow": func(tx pgx.Tx) error { _, err := level(tx); return err },
		"Exec":     func(tx pgx.Tx) error { _, err := tx.Exec(ctx, "INSERT INTO lazy VALUES (1)"); return err },
		"Query": func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "SELECT k FROM lazy")
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		},
		"SendBatch": func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue("INSERT INTO lazy VALUES (1)")
			b.Queue("SELECT 1")
			return tx.SendBatch(ctx, b).Close()
		},
	}
	for name, first := range firsts {
		t.Run(name, func(t *testing.T) {
			if _, err := db.Pool().Exec(ctx, "DELETE FROM lazy"); err != nil {
				t.Fatal(err)
			}
			var got string
			err := db.InTx(ctx, rr, func(tx pgx.Tx) error {
				if err := first(tx); err != nil {
					return err
				}
				var err error
				got, err = level(tx)
				return err
			})
			if err != nil || got != "repeatable read" {
				t.Fatalf("InTx: %v, isolation %q; want repeatable read", err, got)
			}
			// A failure after the first statement rolls it back.
			boom := errors.New("boom")
			err = db.InTx(ctx, rr, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "INSERT INTO lazy VALUES (2)"); err != nil {
					return err
				}
				return boom
			})
			var n int
			if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM lazy WHERE k = 2").Scan(&n); err != nil || n != 0 {
				t.Fatalf("a rolled back transaction left %d rows (%v)", n, err)
			}
			if !errors.Is(err, boom) {
				t.Fatalf("InTx: %v, want boom", err)
			}
		})
	}
	// The first statement failing: its error, nothing left open.
	err := db.InTx(ctx, rr, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO no_such_table VALUES (1)")
		return err
	})
	if err == nil {
		t.Fatal("a failing first statement did not fail InTx")
	}
	err = db.InTx(ctx, rr, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT k FROM no_such_table")
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		return rows.Err()
	})
	if err == nil {
		t.Fatal("a failing first query did not fail InTx")
	}
	// Rows read to their end without Close, then another statement.
	if err := db.InTx(ctx, rr, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT generate_series(1, 3)")
		if err != nil {
			return err
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil || n != 3 {
			return fmt.Errorf("read %d rows: %v", n, err)
		}
		_, err = tx.Exec(ctx, "INSERT INTO lazy VALUES (9)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.InTx(ctx, rr, func(pgx.Tx) error { return nil }); err != nil {
		t.Fatalf("a transaction without statements: %v", err)
	}
	if n := db.Pool().Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still held after the transactions", n)
	}
}

// Writes handed to CommitWith go with COMMIT: they are committed when
// InTx returns nil, also in a transaction that ran nothing else; one that
// fails fails the commit (as a serialization failure there is run again)
// and leaves nothing, and the connection goes back to the pool.
func TestInTxCommitWith(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE lazyc (k int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM lazyc").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	withCommit := func(tx pgx.Tx, ks ...int) {
		b := &pgx.Batch{}
		for _, k := range ks {
			b.Queue("INSERT INTO lazyc VALUES ($1)", k)
		}
		tx.(BatchCommitter).CommitWith(b)
	}
	if err := db.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error { withCommit(tx, 1, 2); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO lazyc VALUES (3)"); err != nil {
			return err
		}
		withCommit(tx, 4)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 4 {
		t.Fatalf("%d rows committed, want 4", n)
	}
	err := db.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO lazyc VALUES (5)"); err != nil {
			return err
		}
		withCommit(tx, 6, 1) // 1 exists
		return nil
	})
	var pg *pgconn.PgError
	if !errors.As(err, &pg) || pg.Code != "23505" {
		t.Fatalf("a failing write with the commit: %v, want the unique violation", err)
	}
	if n := count(); n != 4 {
		t.Fatalf("%d rows after the failed commit, want 4", n)
	}
	runs := 0
	err = db.InTx(ctx, TxOptions{MaxAttempts: 3}, func(tx pgx.Tx) error {
		runs++
		b := &pgx.Batch{}
		b.Queue("SELECT 1/0") // any error: then a serialization failure
		if runs == 1 {
			b = &pgx.Batch{}
			b.Queue(`DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$`)
		}
		tx.(BatchCommitter).CommitWith(b)
		return nil
	})
	if runs != 2 || !errors.As(err, &pg) || pg.Code != "22012" {
		t.Fatalf("runs %d, %v; want the serialization failure run again, then division by zero", runs, err)
	}
	if n := db.Pool().Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still held after the transactions", n)
	}
}
