package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"time"

	"github.com/herald-im/herald/store"
)

var ephemeralBucket = []byte("keys_ephemeral")

// Ephemeral keeps the public halves of per-invite ephemeral keys and whether
// each is still valid. Private halves belong to the invite (they travel in its
// email link), never here.
type Ephemeral struct {
	db  *store.DB
	now func() time.Time
}

type ephemeralRecord struct {
	Valid   bool      `json:"valid"`
	Ref     string    `json:"ref,omitempty"`    // what owns the key, e.g. an invite id
	Expires time.Time `json:"expires,omitzero"` // zero: valid until invalidated
}

// OpenEphemeral creates the bucket. now is the clock expiries are checked
// against (nil: time.Now).
func OpenEphemeral(db *store.DB, now func() time.Time) (*Ephemeral, error) {
	if now == nil {
		now = time.Now
	}
	err := db.Update(func(tx *store.Tx) error {
		_, err := tx.Bolt.CreateBucketIfNotExists(ephemeralBucket)
		return err
	})
	return &Ephemeral{db: db, now: now}, err
}

// NewEphemeralKey generates a fresh ed25519 key pair.
func NewEphemeralKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return pub, priv
}

// Put records pub (unpadded base64) as valid until expires (zero: until
// invalidated), inside the caller's transaction. The expiry makes isvalid
// answer false from that instant on, before any sweeper marks the owner.
func (e *Ephemeral) Put(tx *store.Tx, pub, ref string, expires time.Time) error {
	raw, _ := json.Marshal(ephemeralRecord{Valid: true, Ref: ref, Expires: expires})
	return tx.Bolt.Bucket(ephemeralBucket).Put([]byte(pub), raw)
}

// Invalidate marks pub as no longer valid, inside the caller's transaction.
func (e *Ephemeral) Invalidate(tx *store.Tx, pub string) error {
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

// Delete forgets pub entirely (data erasure).
func (e *Ephemeral) Delete(tx *store.Tx, pub string) error {
	return tx.Bolt.Bucket(ephemeralBucket).Delete([]byte(pub))
}

// IsValid reports whether pub is a known, still valid ephemeral key. It only reads.
func (e *Ephemeral) IsValid(pub string) (bool, error) {
	var valid bool
	err := e.db.View(func(tx *store.Tx) error {
		raw := tx.Bolt.Bucket(ephemeralBucket).Get([]byte(pub))
		if raw == nil {
			if b, err := DecodeBase64(pub); err == nil && EncodeBase64(b) != pub {
				raw = tx.Bolt.Bucket(ephemeralBucket).Get([]byte(EncodeBase64(b)))
			}
		}
		if raw == nil {
			return nil
		}
		r, ok := decodeEphemeralFast(raw)
		if !ok {
			r = ephemeralRecord{}
			if err := json.Unmarshal(raw, &r); err != nil {
				return err
			}
		}
		valid = r.Valid && (r.Expires.IsZero() || e.now().Before(r.Expires))
		return nil
	})
	return valid, err
}

// decodeEphemeralFast decodes a record in the exact shape Put and
// Invalidate write (encoding/json's output for ephemeralRecord: valid, then
// ref and expires when set, a ref without escapes), without reflection: the
// read of every ephemeral/isvalid check. Any other shape gives ok false and
// the caller uses encoding/json (TestDecodeEphemeralFastAgrees).
func decodeEphemeralFast(raw []byte) (r ephemeralRecord, ok bool) {
	s := string(raw)
	switch {
	case strings.HasPrefix(s, `{"valid":true`):
		r.Valid, s = true, s[len(`{"valid":true`):]
	case strings.HasPrefix(s, `{"valid":false`):
		s = s[len(`{"valid":false`):]
	default:
		return r, false
	}
	if rest, found := strings.CutPrefix(s, `,"ref":"`); found {
		end := strings.IndexByte(rest, '"')
		if end < 0 || strings.IndexByte(rest[:end], '\\') >= 0 {
			return r, false
		}
		r.Ref, s = rest[:end], rest[end+1:]
	}
	if rest, found := strings.CutPrefix(s, `,"expires":"`); found {
		end := strings.IndexByte(rest, '"')
		if end < 0 {
			return r, false
		}
		t, err := time.Parse(time.RFC3339Nano, rest[:end])
		if err != nil {
			return r, false
		}
		r.Expires, s = t, rest[end+1:]
	}
	return r, s == "}"
}
