package keys

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
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
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	k := Key{ID: id, Private: priv, Public: priv.Public().(ed25519.PublicKey), Created: created.UTC().Truncate(time.Microsecond)}
	added, err := r.src.add(ctx, k)
	if err != nil {
		return false, err
	}
	if !added {
		// Added meanwhile by another replica or command: the same key or not.
		if err := r.loadContext(ctx); err != nil {
			return false, err
		}
		if k2, ok := r.Get(id); !ok || !k2.Private.Equal(priv) {
			return false, fmt.Errorf("keys: the ring already has a different key with id %s", id)
		}
		return false, nil
	}
	return true, r.loadContext(ctx)
}

// EphemeralRef returns the ref a still-valid ephemeral key was stored with
// (pub as given, or in unpadded standard base64), inside the caller's
// transaction; ok is false for an unknown, invalidated or expired key.
func (e *Ephemeral) EphemeralRef(tx *store.Tx, pub string) (ref string, ok bool, err error) {
	rec, found, err := e.st.get(tx, pub)
	if err != nil {
		return "", false, err
	}
	if !found {
		if dec, derr := DecodeBase64(pub); derr == nil {
			for _, alt := range []string{EncodeBase64(dec), encodeURL(dec)} {
				if rec, found, err = e.st.get(tx, alt); err != nil {
					return "", false, err
				} else if found {
					break
				}
			}
		}
	}
	if !found || !rec.validAt(e.now()) {
		return "", false, nil
	}
	return rec.Ref, true, nil
}

// Has reports whether pub is stored exactly as given (valid or not), inside
// the caller's transaction.
func (e *Ephemeral) Has(tx *store.Tx, pub string) bool {
	_, ok, err := e.st.get(tx, pub)
	return ok && err == nil
}

func encodeURL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
