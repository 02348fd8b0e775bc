package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
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
	now := e.now()
	valid, found, err := e.st.isValid(pub, now)
	if err != nil || found {
		return valid, err
	}
	if b, err := DecodeBase64(pub); err == nil && EncodeBase64(b) != pub {
		valid, _, err = e.st.isValid(EncodeBase64(b), now)
	}
	return valid, err
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
