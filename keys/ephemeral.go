package keys

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"time"

	"github.com/herald-im/herald/store"
)

// Ephemeral keeps the public halves of per-invite ephemeral keys and whether
// each is still valid. Private halves belong to the invite (they travel in its
// email link), never here.
type Ephemeral struct {
	db  *store.DB
	st  ephemeralStore
	now func() time.Time
}

type ephemeralRecord struct {
	Valid   bool      `json:"valid"`
	Ref     string    `json:"ref,omitempty"`    // what owns the key, e.g. an invite id
	Expires time.Time `json:"expires,omitzero"` // zero: valid until invalidated
}

// ephemeralStore keeps ephemeral records by public key (exactly as given),
// inside the caller's transaction: a bbolt bucket (ephemeral_bolt.go) or the
// keys_ephemeral table (ephemeral_pg.go).
type ephemeralStore interface {
	put(tx *store.Tx, pub string, r ephemeralRecord) error
	// get returns the record of pub; ok false when there is none.
	get(tx *store.Tx, pub string) (r ephemeralRecord, ok bool, err error)
	// invalidate clears the valid flag of pub, if it is stored.
	invalidate(tx *store.Tx, pub string) error
	delete(tx *store.Tx, pub string) error
	// isValid reads pub's record outside any transaction: the read of every
	// ephemeral/isvalid check.
	isValid(pub string, now time.Time) (valid, found bool, err error)
}

// OpenEphemeral prepares the storage (the bbolt bucket; the table comes with
// the PostgreSQL migrations). now is the clock expiries are checked against
// (nil: time.Now).
func OpenEphemeral(db *store.DB, now func() time.Time) (*Ephemeral, error) {
	if now == nil {
		now = time.Now
	}
	e := &Ephemeral{db: db, now: now}
	if db.Backend() == store.BackendPostgres {
		e.st = pgEphemeral{db: db}
		return e, nil
	}
	e.st = boltEphemeral{db: db}
	return e, createEphemeralBucket(db)
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
	return e.st.put(tx, pub, ephemeralRecord{Valid: true, Ref: ref, Expires: expires})
}

// Invalidate marks pub as no longer valid, inside the caller's transaction.
func (e *Ephemeral) Invalidate(tx *store.Tx, pub string) error {
	return e.st.invalidate(tx, pub)
}

// Delete forgets pub entirely (data erasure).
func (e *Ephemeral) Delete(tx *store.Tx, pub string) error {
	return e.st.delete(tx, pub)
}

// IsValid reports whether pub is a known, still valid ephemeral key. It only reads.
func (e *Ephemeral) IsValid(pub string) (bool, error) {
	return e.isValid([]byte(pub))
}

// isValid is IsValid for a key the HTTP handler decoded into its own
// buffer: the stored form is looked up without making a string of it.
func (e *Ephemeral) isValid(pub []byte) (bool, error) {
	now := e.now()
	valid, found, err := e.lookup(pub, now)
	if err != nil || found {
		return valid, err
	}
	if b, err := DecodeBase64(string(pub)); err == nil && EncodeBase64(b) != string(pub) {
		valid, _, err = e.st.isValid(EncodeBase64(b), now)
	}
	return valid, err
}

// lookup is st.isValid, called directly on bbolt: through the interface
// pub would escape, and the handler's buffer with it, on every check.
func (e *Ephemeral) lookup(pub []byte, now time.Time) (valid, found bool, err error) {
	if b, ok := e.st.(boltEphemeral); ok {
		return b.isValidBytes(pub, now)
	}
	return e.st.isValid(string(pub), now)
}

func (r ephemeralRecord) validAt(now time.Time) bool {
	return r.Valid && (r.Expires.IsZero() || now.Before(r.Expires))
}

// decodeEphemeralFast decodes a record in the exact shape Put and
// Invalidate write (encoding/json's output for ephemeralRecord: valid, then
// ref and expires when set, a ref without escapes), without reflection: the
// read of every ephemeral/isvalid check. Any other shape gives ok false and
// the caller uses encoding/json (TestDecodeEphemeralFastAgrees).
func decodeEphemeralFast(raw []byte) (r ephemeralRecord, ok bool) {
	return decodeEphemeralBytes(raw, true)
}

var (
	ephemeralValidTrue  = []byte(`{"valid":true`)
	ephemeralValidFalse = []byte(`{"valid":false`)
	ephemeralRef        = []byte(`,"ref":"`)
	ephemeralExpires    = []byte(`,"expires":"`)
)

// decodeEphemeralBytes is decodeEphemeralFast working on raw in place: it
// copies nothing out of raw (which may be bbolt's memory map) unless
// keepRef asks for the ref, and reads the expiry with time.Time's
// UnmarshalText, the strict RFC 3339 parser encoding/json uses, so that a
// validity check allocates nothing.
func decodeEphemeralBytes(s []byte, keepRef bool) (r ephemeralRecord, ok bool) {
	switch {
	case bytes.HasPrefix(s, ephemeralValidTrue):
		r.Valid, s = true, s[len(ephemeralValidTrue):]
	case bytes.HasPrefix(s, ephemeralValidFalse):
		s = s[len(ephemeralValidFalse):]
	default:
		return r, false
	}
	if rest, found := bytes.CutPrefix(s, ephemeralRef); found {
		end := bytes.IndexByte(rest, '"')
		if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
			return r, false
		}
		if keepRef {
			r.Ref = string(rest[:end])
		}
		s = rest[end+1:]
	}
	if rest, found := bytes.CutPrefix(s, ephemeralExpires); found {
		end := bytes.IndexByte(rest, '"')
		if end < 0 {
			return r, false
		}
		if err := r.Expires.UnmarshalText(rest[:end]); err != nil {
			return r, false
		}
		s = rest[end+1:]
	}
	return r, len(s) == 1 && s[0] == '}'
}
