package store

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// issuedBucket records the ids of the long-term signing keys this database
// has been used with (key id -> IssuedKey as JSON). Invites and
// associations stored here are signed under those keys, so start-up
// compares the record with data_dir/keys: a database whose keys are gone,
// or keys whose database is gone, is refused rather than silently paired
// with a new key or an empty database.
var issuedBucket = []byte("issued_keys")

// IssuedKey is one signing key id the database has been used with.
type IssuedKey struct {
	ID       string    `json:"-"`
	Recorded time.Time `json:"recorded"`
	// Lost is when an operator accepted losing the key (`herald keys
	// adopt`); zero while the key is expected in data_dir/keys.
	Lost time.Time `json:"lost,omitzero"`
}

// RecordKeys records that the database is used with the signing keys ids
// (idempotent; a key recorded as lost and present again is expected again).
// Herald records every key of its ring at start and when it picks up a new
// one; an importer that writes data signed under another key (an imported
// sydent key, say) records that key id with it.
func RecordKeys(db *bolt.DB, ids ...string) error {
	return db.Update(func(tx *bolt.Tx) error { return RecordKeysTx(tx, ids...) })
}

// RecordKeysTx is RecordKeys inside a caller's write transaction, so data
// signed under a key and the record of the key commit together.
func RecordKeysTx(tx *bolt.Tx, ids ...string) error {
	b, err := tx.CreateBucketIfNotExists(issuedBucket)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	for _, id := range ids {
		var k IssuedKey
		if raw := b.Get([]byte(id)); raw != nil {
			if err := json.Unmarshal(raw, &k); err != nil {
				return fmt.Errorf("issued key %s: %w", id, err)
			}
			if k.Lost.IsZero() {
				continue
			}
			k.Lost = time.Time{}
		} else {
			k.Recorded = now
		}
		raw, err := json.Marshal(k)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), raw); err != nil {
			return err
		}
	}
	return nil
}

// MarkKeysLost records that the operator gave up the keys ids: the
// database no longer expects them in data_dir/keys.
func MarkKeysLost(db *bolt.DB, ids ...string) error {
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(issuedBucket)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		for _, id := range ids {
			k := IssuedKey{Recorded: now}
			if raw := b.Get([]byte(id)); raw != nil {
				if err := json.Unmarshal(raw, &k); err != nil {
					return fmt.Errorf("issued key %s: %w", id, err)
				}
			}
			k.Lost = now
			raw, err := json.Marshal(k)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(id), raw); err != nil {
				return err
			}
		}
		return nil
	})
}

// IssuedKeys lists the recorded signing key ids, sorted. kept is false for
// a database made before Herald recorded them (0.1), which has no record.
func IssuedKeys(db *bolt.DB) (keys []IssuedKey, kept bool, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(issuedBucket)
		if b == nil {
			return nil
		}
		kept = true
		return b.ForEach(func(k, v []byte) error {
			ik := IssuedKey{ID: string(k)}
			if err := json.Unmarshal(v, &ik); err != nil {
				return fmt.Errorf("issued key %s: %w", k, err)
			}
			keys = append(keys, ik)
			return nil
		})
	})
	sort.Slice(keys, func(i, j int) bool { return keys[i].ID < keys[j].ID })
	return keys, kept, err
}
