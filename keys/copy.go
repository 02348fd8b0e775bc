package keys

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/herald-im/herald/store"
)

// CopyStorage copies every ephemeral key record from src to dst (`herald
// migrate-storage`), in batches of at most 1,000 per destination
// transaction; dst's keys_ephemeral must be empty. The long-term ring is not
// in a bbolt database (it is data_dir/keys): CopyRing copies it.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	dstE, err := OpenEphemeral(dst, nil)
	if err != nil {
		return err
	}
	type rec struct {
		pub string
		r   ephemeralRecord
	}
	after := ""
	for {
		var batch []rec
		last, n, err := eachEphemeral(ctx, src, after, store.CopyBatch, func(pub string, r ephemeralRecord) error {
			batch = append(batch, rec{pub, r})
			return nil
		})
		if err != nil {
			return fmt.Errorf("keys: reading ephemeral keys: %w", err)
		}
		if n == 0 {
			return nil
		}
		if err := dst.UpdateContext(ctx, func(tx *store.Tx) error {
			for _, b := range batch {
				if err := dstE.st.put(tx, b.pub, b.r); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("keys: writing ephemeral keys: %w", err)
		}
		if progress != nil {
			progress(n)
		}
		after = last
	}
}

// eachEphemeral calls fn for up to limit records after the key after, in
// ascending key order (byte order on both backends).
func eachEphemeral(ctx context.Context, db *store.DB, after string, limit int, fn func(pub string, r ephemeralRecord) error) (last string, n int, err error) {
	if db.Backend() != store.BackendPostgres {
		return eachEphemeralBolt(db, after, limit, fn)
	}
	err = db.ViewContext(ctx, func(tx *store.Tx) error {
		last, n = "", 0
		rows, err := tx.PG.Query(tx.Context(), `SELECT pub, valid, ref, expires FROM keys_ephemeral
			WHERE pub > $1 ORDER BY pub LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				pub     string
				r       ephemeralRecord
				expires *time.Time
			)
			if err := rows.Scan(&pub, &r.Valid, &r.Ref, &expires); err != nil {
				return err
			}
			if expires != nil {
				r.Expires = expires.UTC()
			}
			if err := fn(pub, r); err != nil {
				return err
			}
			last, n = pub, n+1
		}
		return rows.Err()
	})
	return last, n, err
}

// canonical encodes a record for sums: times in UTC to the microsecond
// (what PostgreSQL keeps).
func (r ephemeralRecord) canonical(pub string) []byte {
	exp := ""
	if !r.Expires.IsZero() {
		exp = r.Expires.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano)
	}
	raw, _ := json.Marshal([]any{pub, r.Valid, r.Ref, exp})
	return raw
}

// SumStorage sums the ephemeral key records of db (table
// "keys_ephemeral"), identically on both backends.
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	s := store.NewSummer("keys_ephemeral")
	after := ""
	for {
		last, n, err := eachEphemeral(ctx, db, after, store.CopyBatch, func(pub string, r ephemeralRecord) error {
			s.Add(r.canonical(pub))
			return nil
		})
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return []store.TableSum{s.Sum()}, nil
		}
		after = last
	}
}

// CopyRing copies every key of ring (data_dir/keys on a bbolt deployment)
// into dst's signing_keys table, which must be empty, keeping which key is
// current and which are retired.
func CopyRing(ctx context.Context, ring *Ring, dst *store.DB) error {
	if dst.Backend() != store.BackendPostgres {
		return fmt.Errorf("keys: CopyRing copies into PostgreSQL")
	}
	list := ring.List()
	return dst.UpdateContext(ctx, func(tx *store.Tx) error {
		for _, k := range list {
			if _, err := tx.PG.Exec(tx.Context(), `INSERT INTO signing_keys (id, private_key, created, retired, is_current) VALUES ($1, $2, $3, $4, $5)`,
				k.ID, []byte(k.Private.Seed()), k.Created, nullableTime(k.Retired), k.Current); err != nil {
				return err
			}
		}
		return changed(tx, "copy")
	})
}

// RingSum sums the keys of a ring (table "signing_keys") in id order: the
// same on a ring read from data_dir/keys and from PostgreSQL when they hold
// the same keys. The private key counts through its SHA-256 only in the
// sum, as everything does.
func RingSum(ring *Ring) store.TableSum {
	list := ring.List()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	s := store.NewSummer("signing_keys")
	for _, k := range list {
		ret := ""
		if !k.Retired.IsZero() {
			ret = k.Retired.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano)
		}
		raw, _ := json.Marshal([]any{k.ID, k.Private.Seed(), k.Created.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano), ret, k.Current})
		s.Add(raw)
	}
	return s.Sum()
}
