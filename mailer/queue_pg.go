package mailer

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/store"
)

// pgIndex is the outbox's own index in the outbox_ref and outbox_to tables
// (migration 0003), whose rows go with their queue record (a foreign key
// with ON DELETE CASCADE, besides the explicit removal).
type pgIndex struct {
	db *store.DB
}

// add's writes are queued (store.Tx.Exec): they go with the transaction's
// next statement or its commit.
func (pgIndex) add(tx *store.Tx, ref, to string, id uint64) error {
	if ref != "" {
		if err := tx.Exec(`INSERT INTO outbox_ref (ref, id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, ref, int64(id)); err != nil {
			return err
		}
	}
	return tx.Exec(`INSERT INTO outbox_to (addr, id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, to, int64(id))
}

func (pgIndex) remove(tx *store.Tx, ref, to string, id uint64) error {
	c := tx.Context()
	if ref != "" {
		if _, err := tx.PG.Exec(c, `DELETE FROM outbox_ref WHERE ref = $1 AND id = $2`, ref, int64(id)); err != nil {
			return err
		}
	}
	_, err := tx.PG.Exec(c, `DELETE FROM outbox_to WHERE addr = $1 AND id = $2`, to, int64(id))
	return err
}

func collectIDs(rows pgx.Rows, err error) ([]uint64, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (uint64, error) {
		var id int64
		err := row.Scan(&id)
		return uint64(id), err
	})
}

func (p pgIndex) ids(ctx context.Context, ref, to string) ([]uint64, error) {
	pool := p.db.PG().Pool()
	if ref != "" {
		return collectIDs(pool.Query(ctx, `SELECT id FROM outbox_ref WHERE ref = $1 ORDER BY id DESC`, ref))
	}
	return collectIDs(pool.Query(ctx, `SELECT id FROM outbox_to WHERE addr = $1 ORDER BY id DESC`, to))
}

func (pgIndex) idsTx(tx *store.Tx, to string) ([]uint64, error) {
	return collectIDs(tx.PG.Query(tx.Context(), `SELECT id FROM outbox_to WHERE addr = $1 ORDER BY id`, to))
}
