package keys

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// NotifyChannel is signalled (pgstore.Notify) in every transaction that
// changes the ring in PostgreSQL; the wiring subscribes to it and calls
// Ring.Reload on each signal.
const NotifyChannel = "herald_keys"

// pgRing is the ring in the signing_keys table of the shared database.
type pgRing struct {
	db *store.DB
}

// OpenRingDB loads the ring kept in db (PostgreSQL), generating the first
// key if the table is empty; replicas starting at once agree on one first
// key (the insert is conditional on an empty table, in a serializable
// transaction).
func OpenRingDB(ctx context.Context, db *store.DB, serverName string) (*Ring, error) {
	r, err := LoadRingDB(ctx, db, serverName)
	if !errors.Is(err, ErrNoRing) {
		return r, err
	}
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	k := Key{ID: "ed25519:" + newKeyName(), Private: priv, Created: time.Now().UTC().Truncate(time.Microsecond)}
	err = db.UpdateContext(ctx, func(tx *store.Tx) error {
		tag, err := tx.PG.Exec(tx.Context(), `INSERT INTO signing_keys (id, private_key, created, is_current)
			SELECT $1, $2, $3, true WHERE NOT EXISTS (SELECT 1 FROM signing_keys)`, k.ID, []byte(priv.Seed()), k.Created)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		return changed(tx, "rotate")
	})
	if err != nil {
		return nil, fmt.Errorf("keys: generating the first key: %w", err)
	}
	return LoadRingDB(ctx, db, serverName)
}

// LoadRingDB loads the ring kept in db (PostgreSQL); unlike OpenRingDB it
// generates nothing, and returns an error wrapping ErrNoRing when the table
// holds no key.
func LoadRingDB(ctx context.Context, db *store.DB, serverName string) (*Ring, error) {
	if db.Backend() != store.BackendPostgres {
		return nil, errors.New("keys: LoadRingDB needs PostgreSQL; on bbolt the ring lives in data_dir/keys (LoadRing)")
	}
	src := &pgRing{db: db}
	var n int
	if err := db.PG().Pool().QueryRow(ctx, `SELECT count(*) FROM signing_keys`).Scan(&n); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	if n == 0 {
		return nil, fmt.Errorf("the signing_keys table: %w", ErrNoRing)
	}
	r := &Ring{src: src, server: serverName}
	if err := r.loadContext(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (p *pgRing) where() string { return "the signing_keys table" }

func (p *pgRing) read(ctx context.Context) ([]*Key, string, error) {
	var out []*Key
	var stamp string
	err := p.db.ViewContext(ctx, func(tx *store.Tx) error {
		out = out[:0]
		rows, err := tx.PG.Query(tx.Context(), `SELECT id, private_key, created, retired, is_current FROM signing_keys ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				k       Key
				seed    []byte
				retired *time.Time
			)
			if err := rows.Scan(&k.ID, &seed, &k.Created, &retired, &k.Current); err != nil {
				rows.Close()
				return err
			}
			if len(seed) != ed25519.SeedSize {
				rows.Close()
				return fmt.Errorf("keys: signing_keys row %s holds no ed25519 seed", k.ID)
			}
			k.Private = ed25519.NewKeyFromSeed(seed)
			k.Public = k.Private.Public().(ed25519.PublicKey)
			k.Created = k.Created.UTC()
			if retired != nil {
				k.Retired = retired.UTC()
			}
			out = append(out, &k)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		stamp, err = pgStamp(tx.Context(), tx.PG)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("keys: reading the ring: %w", err)
	}
	return out, stamp, nil
}

// pgStamp changes with every write to the ring: the version row counts them.
func pgStamp(ctx context.Context, q pgx.Tx) (string, error) {
	var v int64
	err := q.QueryRow(ctx, `SELECT version FROM signing_keys_version`).Scan(&v)
	return strconv.FormatInt(v, 10), err
}

func (p *pgRing) stamp(ctx context.Context) (string, error) {
	var v int64
	err := p.db.PG().Pool().QueryRow(ctx, `SELECT version FROM signing_keys_version`).Scan(&v)
	return strconv.FormatInt(v, 10), err
}

// changed bumps the version and notifies, inside the writing transaction.
func changed(tx *store.Tx, what string) error {
	if _, err := tx.PG.Exec(tx.Context(), `UPDATE signing_keys_version SET version = version + 1`); err != nil {
		return err
	}
	return pgstore.Notify(tx.Context(), tx.PG, NotifyChannel, what)
}

func (p *pgRing) rotate(ctx context.Context, k Key) error {
	return p.db.UpdateContext(ctx, func(tx *store.Tx) error {
		c := tx.Context()
		if _, err := tx.PG.Exec(c, `UPDATE signing_keys SET is_current = false WHERE is_current`); err != nil {
			return err
		}
		if _, err := tx.PG.Exec(c, `INSERT INTO signing_keys (id, private_key, created, is_current) VALUES ($1, $2, $3, true)`,
			k.ID, []byte(k.Private.Seed()), k.Created); err != nil {
			return err
		}
		return changed(tx, "rotate")
	})
}

func (p *pgRing) retire(ctx context.Context, id string, t time.Time) error {
	return p.db.UpdateContext(ctx, func(tx *store.Tx) error {
		c := tx.Context()
		var (
			current bool
			retired *time.Time
		)
		err := tx.PG.QueryRow(c, `SELECT is_current, retired FROM signing_keys WHERE id = $1`, id).Scan(&current, &retired)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return ErrUnknownKey
		case err != nil:
			return err
		case current:
			return errCurrentKey
		case retired != nil:
			return nil
		}
		if _, err := tx.PG.Exec(c, `UPDATE signing_keys SET retired = $2 WHERE id = $1`, id, t); err != nil {
			return err
		}
		return changed(tx, "retire")
	})
}

func (p *pgRing) add(ctx context.Context, k Key) (bool, error) {
	var added bool
	err := p.db.UpdateContext(ctx, func(tx *store.Tx) error {
		tag, err := tx.PG.Exec(tx.Context(), `INSERT INTO signing_keys (id, private_key, created, is_current) VALUES ($1, $2, $3, false)
			ON CONFLICT (id) DO NOTHING`, k.ID, []byte(k.Private.Seed()), k.Created)
		if err != nil {
			return err
		}
		added = tag.RowsAffected() == 1
		if !added {
			return nil
		}
		return changed(tx, "add")
	})
	return added, err
}

var _ ringStore = (*pgRing)(nil)
