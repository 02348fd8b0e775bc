package store_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// ReadOne reads what was committed and refuses writes, on both backends.
func TestReadOneReadsAndRefusesWrites(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		write := func(tx *store.Tx) error {
			if tx.PG != nil {
				_, err := tx.PG.Exec(tx.Context(), `INSERT INTO readone_test (k, v) VALUES (1, 'one')`)
				return err
			}
			b, err := tx.Bolt.CreateBucketIfNotExists([]byte("readone_test"))
			if err != nil {
				return err
			}
			return b.Put([]byte("1"), []byte("one"))
		}
		if db.PG() != nil {
			if _, err := db.PG().Pool().Exec(t.Context(), `CREATE TABLE readone_test (k int PRIMARY KEY, v text)`); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Commit(write); err != nil {
			t.Fatal(err)
		}
		var got string
		err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
			if tx.Writable() {
				t.Error("ReadOne's transaction says it is writable")
			}
			if tx.PG != nil {
				return tx.PG.QueryRow(tx.Context(), `SELECT v FROM readone_test WHERE k = 1`).Scan(&got)
			}
			got = string(tx.Bolt.Bucket([]byte("readone_test")).Get([]byte("1")))
			return nil
		})
		if err != nil || got != "one" {
			t.Fatalf("ReadOne read %q, %v; want \"one\"", got, err)
		}
		err = db.ReadOne(t.Context(), func(tx *store.Tx) error {
			if tx.PG != nil {
				if err := tx.Exec(`DELETE FROM readone_test`); !errors.Is(err, store.ErrReadOnly) {
					t.Errorf("Tx.Exec in ReadOne: %v, want ErrReadOnly", err)
				}
			}
			return write(tx)
		})
		if err == nil {
			t.Fatal("a write in ReadOne succeeded")
		}
		if db.PG() == nil && !errors.Is(err, bolt.ErrTxNotWritable) {
			t.Fatalf("a bbolt write in ReadOne: %v, want bolt.ErrTxNotWritable", err)
		}
	})
}

// On PostgreSQL ReadOne opens no transaction: not View's REPEATABLE READ
// one (the server's default isolation applies), and two statements are two
// snapshots, as the contract in store/db.go says.
func TestReadOneRunsWithoutATransaction(t *testing.T) {
	db := pgDB(t)
	var level string
	if err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
		return tx.PG.QueryRow(tx.Context(), `SHOW transaction_isolation`).Scan(&level)
	}); err != nil {
		t.Fatal(err)
	}
	if level != "read committed" {
		t.Errorf("ReadOne's statement ran at %q, want the default read committed", level)
	}

	var before, after int
	err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
		if err := tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM exec_test`).Scan(&before); err != nil {
			return err
		}
		if _, err := db.PG().Pool().Exec(t.Context(), `INSERT INTO exec_test (k) VALUES (1)`); err != nil {
			return err
		}
		return tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM exec_test`).Scan(&after)
	})
	if err != nil {
		t.Fatal(err)
	}
	if before != 0 || after != 1 {
		t.Fatalf("ReadOne's two statements read %d then %d rows; want 0 then 1 (no common snapshot)", before, after)
	}
}

// Reads queued with QueueRow are answered together when the queue is sent
// (Flush, or the end of ReadOne's function); a missing row is
// pgx.ErrNoRows, and an error a scan returns is ReadOne's.
func TestQueueRowInReadOne(t *testing.T) {
	db := pgDB(t)
	if _, err := db.PG().Pool().Exec(t.Context(), `INSERT INTO exec_test (k) VALUES (7)`); err != nil {
		t.Fatal(err)
	}
	var got int
	var missing error
	err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
		if err := tx.QueueRow(func(row pgx.Row) error { return row.Scan(&got) }, `SELECT k FROM exec_test WHERE k = $1`, 7); err != nil {
			return err
		}
		if err := tx.QueueRow(func(row pgx.Row) error { var k int; missing = row.Scan(&k); return nil }, `SELECT k FROM exec_test WHERE k = $1`, 8); err != nil {
			return err
		}
		if got != 0 {
			t.Error("a queued read was answered before the queue was sent")
		}
		return tx.Flush()
	})
	if err != nil || got != 7 || !errors.Is(missing, pgx.ErrNoRows) {
		t.Fatalf("ReadOne: %v, read %d and %v; want 7 and pgx.ErrNoRows", err, got, missing)
	}

	got = 0
	err = db.ReadOne(t.Context(), func(tx *store.Tx) error {
		return tx.QueueRow(func(row pgx.Row) error { return row.Scan(&got) }, `SELECT k FROM exec_test WHERE k = 7`)
	})
	if err != nil || got != 7 {
		t.Fatalf("a read left queued at the end of ReadOne's function: %v, %d; want it sent", err, got)
	}

	boom := errors.New("boom")
	err = db.ReadOne(t.Context(), func(tx *store.Tx) error {
		return tx.QueueRow(func(pgx.Row) error { return boom }, `SELECT 1`)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("ReadOne with a failing scan: %v, want it", err)
	}
}

// QueueRow on bbolt is an error: bbolt is read directly.
func TestQueueRowOnBolt(t *testing.T) {
	db := storetest.Open(t, store.BackendBolt)
	err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
		return tx.QueueRow(func(pgx.Row) error { return nil }, `SELECT 1`)
	})
	if err == nil {
		t.Fatal("QueueRow on bbolt succeeded")
	}
}

// In a write transaction, a QueryRow goes with the queued writes and reads
// in one batch: the queued statements run first, in order, and their
// results are in before the row is scanned. A queued write that fails fails
// that QueryRow and the commit.
func TestQueryRowJoinsQueuedStatements(t *testing.T) {
	db := pgDB(t)
	var queued, n int
	err := db.Commit(func(tx *store.Tx) error {
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); err != nil {
			return err
		}
		if err := tx.QueueRow(func(row pgx.Row) error { return row.Scan(&queued) }, `SELECT count(*) FROM exec_test`); err != nil {
			return err
		}
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (2)`); err != nil {
			return err
		}
		if err := tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM exec_test`).Scan(&n); err != nil {
			return err
		}
		if queued != 1 || n != 2 {
			t.Errorf("queued read %d, then QueryRow %d; want 1, 2", queued, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := rows(t, db); got != 2 {
		t.Fatalf("%d rows committed, want 2", got)
	}

	var scanErr error
	ran := false
	err = db.Commit(func(tx *store.Tx) error {
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (3)`); err != nil {
			return err
		}
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); err != nil { // a duplicate
			return err
		}
		if err := tx.QueueRow(func(pgx.Row) error { ran = true; return nil }, `SELECT 1`); err != nil {
			return err
		}
		scanErr = tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM exec_test`).Scan(&n)
		return nil
	})
	var pg *pgconn.PgError
	if !errors.As(scanErr, &pg) || pg.Code != "23505" || !errors.As(err, &pg) || pg.Code != "23505" {
		t.Fatalf("QueryRow after a failing queued write: %v, commit: %v; want the unique violation from both", scanErr, err)
	}
	if ran {
		t.Error("a read queued after the failing write was answered")
	}
	if got := rows(t, db); got != 2 {
		t.Fatalf("%d rows after the failed transaction, want 2", got)
	}
}

// PGTxQueued queues like DB's write transactions; FlushWithCommit hands
// what is left to a transaction of pgstore.InTx, which sends it with its
// COMMIT, and sends it at once in any other transaction.
func TestPGTxQueuedFlushWithCommit(t *testing.T) {
	db := pgDB(t)
	ctx := t.Context()
	var queuedSeen int
	err := db.PG().InTx(ctx, pgstore.TxOptions{}, func(ptx pgx.Tx) error {
		tx := store.PGTxQueued(ctx, ptx)
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); err != nil {
			return err
		}
		if err := tx.PG.QueryRow(ctx, `SELECT count(*) FROM exec_test`).Scan(&queuedSeen); err != nil {
			return err
		}
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (2)`); err != nil {
			return err
		}
		return tx.FlushWithCommit()
	})
	if err != nil || queuedSeen != 1 {
		t.Fatalf("InTx: %v; the transaction read %d rows after one queued insert, want 1", err, queuedSeen)
	}
	if n := rows(t, db); n != 2 {
		t.Fatalf("%d rows committed, want 2", n)
	}

	ptx, err := db.PG().Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx := store.PGTxQueued(ctx, ptx)
	if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.FlushWithCommit(); err != nil {
		t.Fatal(err)
	}
	if err := ptx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rows(t, db); n != 3 {
		t.Fatalf("%d rows after a plain transaction's FlushWithCommit and commit, want 3", n)
	}
}
