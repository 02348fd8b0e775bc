package keys

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/store"
)

// pgEphemeral keeps ephemeral records in the keys_ephemeral table.
type pgEphemeral struct {
	db *store.DB
}

func nullableTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// put's write is queued (store.Tx.Exec): it goes with the transaction's
// next statement or its commit.
func (pgEphemeral) put(tx *store.Tx, pub string, r ephemeralRecord) error {
	return tx.Exec(`INSERT INTO keys_ephemeral (pub, valid, ref, expires) VALUES ($1, $2, $3, $4)
		ON CONFLICT (pub) DO UPDATE SET valid = excluded.valid, ref = excluded.ref, expires = excluded.expires`,
		pub, r.Valid, r.Ref, nullableTime(r.Expires))
}

func scanEphemeral(row pgx.Row) (ephemeralRecord, bool, error) {
	var (
		r       ephemeralRecord
		expires *time.Time
	)
	err := row.Scan(&r.Valid, &r.Ref, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return ephemeralRecord{}, false, nil
	}
	if err != nil {
		return ephemeralRecord{}, false, err
	}
	if expires != nil {
		r.Expires = expires.UTC()
	}
	return r, true, nil
}

func (pgEphemeral) get(tx *store.Tx, pub string) (ephemeralRecord, bool, error) {
	return scanEphemeral(tx.PG.QueryRow(tx.Context(), `SELECT valid, ref, expires FROM keys_ephemeral WHERE pub = $1`, pub))
}

func (pgEphemeral) invalidate(tx *store.Tx, pub string) error {
	_, err := tx.PG.Exec(tx.Context(), `UPDATE keys_ephemeral SET valid = false WHERE pub = $1`, pub)
	return err
}

func (pgEphemeral) delete(tx *store.Tx, pub string) error {
	_, err := tx.PG.Exec(tx.Context(), `DELETE FROM keys_ephemeral WHERE pub = $1`, pub)
	return err
}

// isValid is one statement: it runs without a transaction
// (store.DB.ReadOne).
func (e pgEphemeral) isValid(pub string, now time.Time) (valid, found bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var r ephemeralRecord
	err = e.db.ReadOne(ctx, func(tx *store.Tx) error {
		var err error
		r, found, err = scanEphemeral(tx.PG.QueryRow(tx.Context(), `SELECT valid, ref, expires FROM keys_ephemeral WHERE pub = $1`, pub))
		return err
	})
	return r.validAt(now), found, err
}
