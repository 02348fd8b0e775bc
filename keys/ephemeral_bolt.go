package keys

import (
	"encoding/json"
	"time"

	"github.com/herald-im/herald/store"
)

var ephemeralBucket = []byte("keys_ephemeral")

// boltEphemeral keeps ephemeral records as JSON in the keys_ephemeral
// bucket, keyed by the public key.
type boltEphemeral struct {
	db *store.DB
}

func createEphemeralBucket(db *store.DB) error {
	return db.Update(func(tx *store.Tx) error {
		_, err := tx.Bolt.CreateBucketIfNotExists(ephemeralBucket)
		return err
	})
}

func (boltEphemeral) put(tx *store.Tx, pub string, r ephemeralRecord) error {
	raw, _ := json.Marshal(r)
	return tx.Bolt.Bucket(ephemeralBucket).Put([]byte(pub), raw)
}

func (boltEphemeral) get(tx *store.Tx, pub string) (ephemeralRecord, bool, error) {
	raw := tx.Bolt.Bucket(ephemeralBucket).Get([]byte(pub))
	if raw == nil {
		return ephemeralRecord{}, false, nil
	}
	r, err := decodeEphemeral(raw)
	return r, err == nil, err
}

func decodeEphemeral(raw []byte) (ephemeralRecord, error) {
	return decodeEphemeralKeep(raw, true)
}

// decodeEphemeralKeep decodes raw, copying the ref out only when keepRef
// says the caller needs it. Records of another shape than Put's go through
// encoding/json, into a record of their own so that the common case does
// not put one on the heap.
func decodeEphemeralKeep(raw []byte, keepRef bool) (ephemeralRecord, error) {
	if r, ok := decodeEphemeralBytes(raw, keepRef); ok {
		return r, nil
	}
	var slow ephemeralRecord
	err := json.Unmarshal(raw, &slow)
	return slow, err
}

func (boltEphemeral) invalidate(tx *store.Tx, pub string) error {
	b := tx.Bolt.Bucket(ephemeralBucket)
	raw := b.Get([]byte(pub))
	if raw == nil {
		return nil
	}
	var r ephemeralRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	r.Valid = false
	raw, _ = json.Marshal(r)
	return b.Put([]byte(pub), raw)
}

func (boltEphemeral) delete(tx *store.Tx, pub string) error {
	return tx.Bolt.Bucket(ephemeralBucket).Delete([]byte(pub))
}

func (e boltEphemeral) isValid(pub string, now time.Time) (valid, found bool, err error) {
	return e.isValidBytes([]byte(pub), now)
}

// isValidBytes opens its bbolt read transaction itself rather than through
// store.DB.View: it is the read of every ephemeral/isvalid check, and
// View's closure and store.Tx wrapper cost allocations on each. The record
// is decoded before the deferred Rollback releases the memory it lives in,
// and nothing of it is kept.
func (e boltEphemeral) isValidBytes(pub []byte, now time.Time) (valid, found bool, err error) {
	tx, err := e.db.Bolt().Begin(false)
	if err != nil {
		return false, false, err
	}
	defer tx.Rollback()
	raw := tx.Bucket(ephemeralBucket).Get(pub)
	if raw == nil {
		return false, false, nil
	}
	r, err := decodeEphemeralKeep(raw, false)
	return r.validAt(now), true, err
}

// eachEphemeralBolt calls fn for every record in key order, in batches of
// one read transaction per call (after: the last key seen).
func eachEphemeralBolt(db *store.DB, after string, limit int, fn func(pub string, r ephemeralRecord) error) (last string, n int, err error) {
	err = db.View(func(tx *store.Tx) error {
		c := tx.Bolt.Bucket(ephemeralBucket).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil && n < limit; k, v = c.Next() {
			r, err := decodeEphemeral(v)
			if err != nil {
				return err
			}
			if err := fn(string(k), r); err != nil {
				return err
			}
			last, n = string(k), n+1
		}
		return nil
	})
	return last, n, err
}
