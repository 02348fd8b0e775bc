package identity

import (
	"context"
	"fmt"

	"sync/atomic"
	"time"

	"github.com/herald-im/herald/store"
)

// pgLookupCache is a replica's in-memory copy of identity_lookup_hashes on
// PostgreSQL (the same hash table as bbolt's, lookupfilter.go), so that a
// lookup of a thousand hashes costs one short query and a thousand memory
// probes instead of a thousand btree descents in the database.
//
// It is never stale: each lookup first reads, in one statement, the index's
// generation and the logged changes after the generation the copy reflects
// (identity_lookup_gen and identity_lookup_changes, written by every change
// of the index in its own transaction), applies them, and only then answers
// from memory. A bind or unbind answered on any replica committed before
// that statement ran, so the answer includes it. A change of the whole index
// (a new pepper, an import), a gap in the log (pruned changes) or too many
// changes drop the copy: lookups query the database until the next lookup
// has built it again from one snapshot.
type pgLookupCache struct {
	idx lookupIndex // slots, pepper and built, under idx.mu
	gen int64       // the generation idx reflects, under idx.mu

	building atomic.Bool
}

// maxLookupChanges is how many logged changes a lookup applies; more drop
// the copy (building it again is cheaper).
const maxLookupChanges = 10000

// logLookupChange records a change of the hash index under the next
// generation: hash nil for a change of the whole index, mxid nil for a
// removed hash. Every pruneEvery generations it also deletes the changes
// older than keepLookupChanges (through their index on at), so the log
// stays as long as an hour of binds.
func logLookupChange(tx *store.Tx, hash []byte, mxid *string) error {
	var gen int64
	err := tx.PG.QueryRow(tx.Context(), `WITH g AS (UPDATE identity_lookup_gen SET gen = gen + 1 RETURNING gen)
		INSERT INTO identity_lookup_changes (gen, hash, mxid) SELECT gen, $1, $2 FROM g RETURNING gen`, hash, mxid).Scan(&gen)
	if err != nil || gen%pruneEvery != 0 {
		return err
	}
	_, err = tx.PG.Exec(tx.Context(), `DELETE FROM identity_lookup_changes WHERE at < now() - $1::interval`, keepLookupChanges)
	return err
}

const (
	pruneEvery        = 256
	keepLookupChanges = "1 hour"
)

type lookupChange struct {
	gen  int64
	hash []byte
	mxid *string
}

// lookup answers from the copy once it is current, and through fallback
// (the database) while there is none, building it afterwards.
func (c *pgLookupCache) lookup(db *store.DB, pepper string, keys [][32]byte, found func(i int, mxid []byte),
	fallback func(*store.DB, string, [][32]byte, func(int, []byte)) (string, error)) (string, error) {
	c.idx.mu.RLock()
	built, gen := c.idx.built, c.gen
	c.idx.mu.RUnlock()
	if built {
		cur, changes, err := c.changesSince(db, gen)
		if err != nil {
			return "", err
		}
		c.apply(cur, changes)
		c.idx.mu.RLock()
		if c.idx.built && c.gen >= cur {
			current := c.idx.pepper
			if current != pepper {
				c.idx.mu.RUnlock()
				return current, errWrongPepper
			}
			for i := range keys {
				s := &c.idx.slots[c.idx.findLocked(splitHash(keys[i][:]))]
				if s.off != 0 {
					mxid, _ := c.idx.at(s.off)
					found(i, mxid)
				}
			}
			c.idx.mu.RUnlock()
			return current, nil
		}
		c.idx.mu.RUnlock()
	}
	current, err := fallback(db, pepper, keys, found)
	if err == nil || err == errWrongPepper {
		if berr := c.build(db); berr != nil && err == nil {
			// Answered anyway; the caller logs it.
			return current, fmt.Errorf("%w: %v", errIndexNotBuilt, berr)
		}
	}
	return current, err
}

// changesSince reads the current generation and the changes after gen, in
// one statement (one snapshot).
func (c *pgLookupCache) changesSince(db *store.DB, gen int64) (int64, []lookupChange, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := db.PG().Pool().Query(ctx, `SELECT g.gen, c.gen, c.hash, c.mxid FROM identity_lookup_gen g
		LEFT JOIN LATERAL (SELECT gen, hash, mxid FROM identity_lookup_changes WHERE gen > $1 ORDER BY gen LIMIT $2) c ON true
		ORDER BY c.gen`, gen, maxLookupChanges+1)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	var cur int64
	var changes []lookupChange
	for rows.Next() {
		var ch lookupChange
		var cgen *int64
		if err := rows.Scan(&cur, &cgen, &ch.hash, &ch.mxid); err != nil {
			return 0, nil, err
		}
		if cgen != nil {
			ch.gen = *cgen
			changes = append(changes, ch)
		}
	}
	return cur, changes, rows.Err()
}

// apply brings the copy to generation cur with changes, or drops it when
// they do not lead there.
func (c *pgLookupCache) apply(cur int64, changes []lookupChange) {
	c.idx.mu.RLock()
	current := !c.idx.built || c.gen >= cur
	c.idx.mu.RUnlock()
	if current {
		return
	}
	c.idx.mu.Lock()
	defer c.idx.mu.Unlock()
	if len(changes) > maxLookupChanges {
		c.idx.dropLocked()
		return
	}
	for _, ch := range changes {
		if !c.idx.built {
			return
		}
		if ch.gen <= c.gen {
			continue // applied by a concurrent lookup
		}
		if ch.gen != c.gen+1 || len(ch.hash) != 32 {
			c.idx.dropLocked() // a gap, or the whole index changed
			return
		}
		if ch.mxid == nil {
			c.idx.deleteLocked(ch.hash)
		} else {
			c.idx.putLocked(ch.hash, []byte(*ch.mxid))
		}
		c.gen = ch.gen
	}
	if c.idx.built && c.gen < cur {
		c.idx.dropLocked() // the changes were pruned
	}
}

// build reads the whole index, its pepper and its generation from one
// snapshot and installs the copy (unless a build runs already).
func (c *pgLookupCache) build(db *store.DB) error {
	if !c.building.CompareAndSwap(false, true) {
		return nil
	}
	defer c.building.Store(false)
	var fresh lookupIndex
	var gen int64
	err := db.View(func(tx *store.Tx) error {
		fresh = lookupIndex{}
		ctx := tx.Context()
		var n int64
		err := tx.PG.QueryRow(ctx, `SELECT g.gen, p.pepper, (SELECT n FROM identity_binding_count) FROM identity_lookup_gen g, identity_lookup_pepper p`).
			Scan(&gen, &fresh.pepper, &n)
		if err != nil {
			return err
		}
		size := 1024
		for int64(size) < n*2+2 {
			size *= 2
		}
		fresh.slots = make([]lookupSlot, size)
		rows, err := tx.PG.Query(ctx, `SELECT hash, mxid FROM identity_lookup_hashes`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var h, mxid []byte
			if err := rows.Scan(&h, &mxid); err != nil {
				return err
			}
			if len(h) == 32 {
				fresh.putLocked(h, mxid)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	c.idx.mu.Lock()
	c.idx.slots, c.idx.n, c.idx.arena, c.idx.garbage, c.idx.pepper, c.idx.built = fresh.slots, fresh.n, fresh.arena, fresh.garbage, fresh.pepper, true
	c.gen = gen
	c.idx.mu.Unlock()
	return nil
}
