package keys

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/herald-im/herald/store"
)

// AddImported adds priv under id as a published, non-current key: another
// identity server's key (sydent's "ed25519:0") whose signatures must keep
// verifying after the move. It reports whether the ring changed: adding the
// same key again changes nothing, and a different key under an id the ring
// already has is an error.
func (r *Ring) AddImported(id string, priv ed25519.PrivateKey, created time.Time) (bool, error) {
	if !strings.HasPrefix(id, "ed25519:") || len(id) == len("ed25519:") {
		return false, fmt.Errorf("keys: %q is not an ed25519 key id", id)
	}
	if k, ok := r.Get(id); ok {
		if !k.Private.Equal(priv) {
			return false, fmt.Errorf("keys: the ring already has a different key with id %s", id)
		}
		return false, nil
	}
	rf, _, err := r.readRingFile()
	if err != nil {
		return false, err
	}
	if err := writeJWK(r.keyPath(id), id, priv); err != nil {
		return false, err
	}
	rf.Keys[id] = ringEntry{Created: created.UTC()}
	if err := r.save(rf); err != nil {
		return false, err
	}
	return true, r.load()
}

// EphemeralRef returns the ref a still-valid ephemeral key was stored with
// (pub as given, or in unpadded standard base64), inside the caller's
// transaction; ok is false for an unknown, invalidated or expired key.
func (e *Ephemeral) EphemeralRef(tx *store.Tx, pub string) (ref string, ok bool, err error) {
	b := tx.Bolt.Bucket(ephemeralBucket)
	raw := b.Get([]byte(pub))
	if raw == nil {
		if dec, derr := DecodeBase64(pub); derr == nil {
			for _, alt := range []string{EncodeBase64(dec), encodeURL(dec)} {
				if raw = b.Get([]byte(alt)); raw != nil {
					break
				}
			}
		}
	}
	if raw == nil {
		return "", false, nil
	}
	var rec ephemeralRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return "", false, err
	}
	if !rec.Valid || (!rec.Expires.IsZero() && !e.now().Before(rec.Expires)) {
		return "", false, nil
	}
	return rec.Ref, true, nil
}

// Has reports whether pub is stored exactly as given (valid or not), inside
// the caller's transaction.
func (e *Ephemeral) Has(tx *store.Tx, pub string) bool {
	return tx.Bolt.Bucket(ephemeralBucket).Get([]byte(pub)) != nil
}

func encodeURL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
