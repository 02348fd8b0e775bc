package store_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func pgDB(t *testing.T) *store.DB {
	t.Helper()
	db := storetest.OpenPostgres(t, pgtest.DSN(t))
	if _, err := db.PG().Pool().Exec(t.Context(), `CREATE TABLE exec_test (k int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return db
}

func rows(t *testing.T, db *store.DB) int {
	t.Helper()
	var n int
	if err := db.PG().Pool().QueryRow(t.Context(), `SELECT count(*) FROM exec_test`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Writes queued with Tx.Exec are sent before the transaction's next
// statement, so its reads see them, and the rest at the commit.
func TestTxExecQueuedWritesAreSeenAndCommitted(t *testing.T) {
	db := pgDB(t)
	err := db.Commit(func(tx *store.Tx) error {
		for k := range 3 {
			if err := tx.Exec(`INSERT INTO exec_test (k) VALUES ($1)`, k); err != nil {
				return err
			}
		}
		var n int
		if err := tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM exec_test`).Scan(&n); err != nil {
			return err
		}
		if n != 3 {
			t.Errorf("the transaction reads %d rows after three queued inserts", n)
		}
		return tx.Exec(`INSERT INTO exec_test (k) VALUES (3)`) // sent with the commit
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := rows(t, db); n != 4 {
		t.Fatalf("%d rows committed, want 4", n)
	}
}

// A queued write that fails does not fail at Exec (it was not sent) but at
// the commit, which rolls everything back; in a transaction opened outside
// DB (PGTx) Exec runs at once and fails there.
func TestTxExecQueuedErrorFailsTheCommit(t *testing.T) {
	db := pgDB(t)
	var execErr error
	err := db.Commit(func(tx *store.Tx) error {
		if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); err != nil {
			return err
		}
		execErr = tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`)
		return nil
	})
	var pg *pgconn.PgError
	if execErr != nil || !errors.As(err, &pg) || pg.Code != "23505" {
		t.Fatalf("Exec: %v, commit: %v; want nil, then a unique violation", execErr, err)
	}
	if n := rows(t, db); n != 0 {
		t.Fatalf("%d rows committed by a failed transaction", n)
	}

	pgtx, err := db.PG().Pool().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer pgtx.Rollback(context.Background())
	tx := store.PGTx(t.Context(), pgtx)
	if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Exec(`INSERT INTO exec_test (k) VALUES (1)`); !errors.As(err, &pg) || pg.Code != "23505" {
		t.Fatalf("Exec outside DB: %v, want the unique violation at once", err)
	}
}

// CommitWith chooses the isolation of the transaction on PostgreSQL.
func TestCommitWithIsolation(t *testing.T) {
	db := pgDB(t)
	for _, c := range []struct {
		opts store.TxOptions
		want string
	}{{store.TxOptions{}, "serializable"}, {store.TxOptions{ReadCommitted: true}, "read committed"}} {
		var level string
		if err := db.CommitWith(t.Context(), c.opts, func(tx *store.Tx) error {
			return tx.PG.QueryRow(tx.Context(), `SHOW transaction_isolation`).Scan(&level)
		}); err != nil {
			t.Fatal(err)
		}
		if level != c.want {
			t.Errorf("CommitWith(%+v) runs at %q, want %q", c.opts, level, c.want)
		}
	}
}
