// Package keys keeps Herald's ed25519 signing keys and signs JSON the Matrix
// way. On bbolt deployments long-term keys live as JWK files (mode 0600) in
// data_dir/keys with a small ring.json recording which is current and which
// are retired, and per-invite ephemeral public keys in their own bbolt
// bucket; with PostgreSQL both live in tables of the shared database
// (migration 0003_keys_admin_mail.sql), so every replica signs with the
// same keys.
package keys

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v3"
)

// Key is one long-term signing key.
type Key struct {
	ID      string // "ed25519:NAME"
	Public  ed25519.PublicKey
	Private ed25519.PrivateKey
	Created time.Time
	Retired time.Time // zero while the key is published
	Current bool
}

// PublicBase64 is the public key in unpadded base64, as Matrix publishes it.
func (k Key) PublicBase64() string { return EncodeBase64(k.Public) }

// Valid reports whether the key is still published.
func (k Key) Valid() bool { return k.Retired.IsZero() }

// Ring is the set of long-term keys. It is safe for concurrent use.
//
// The keys live in a ringStore: JWK files and ring.json in data_dir/keys
// (ring_files.go, the bbolt deployments' layout) or a table of the shared
// PostgreSQL database (ring_pg.go), read by every replica.
type Ring struct {
	src    ringStore
	server string

	mu      sync.RWMutex
	keys    map[string]*Key
	byPub   map[string]*Key
	current *Key
	stamp   string

	// record, when set, is told every key id before a (re)load takes
	// effect; if it fails the ring stays as it was (SetRecorder).
	record func(ids []string) error
}

// ringStore keeps the keys of a Ring. Its writes are whole: a key written
// is published (and current, for rotate) once the call returns, on every
// replica that reloads.
type ringStore interface {
	// read returns every key, Current set on the current one, and a stamp
	// that changes whenever the ring changes.
	read(ctx context.Context) ([]*Key, string, error)
	// stamp is read's stamp alone, cheaply.
	stamp(ctx context.Context) (string, error)
	// rotate adds k and makes it the only current key.
	rotate(ctx context.Context, k Key) error
	// retire marks id retired at t: ErrUnknownKey if there is no such key,
	// errCurrentKey if it is the current one, nil if it is retired already.
	retire(ctx context.Context, id string, t time.Time) error
	// add adds k as a published, non-current key; added is false when a key
	// with k's id exists (the caller compares it).
	add(ctx context.Context, k Key) (added bool, err error)
	// where names the store in error messages.
	where() string
}

// errCurrentKey refuses to retire the current key.
var errCurrentKey = errors.New("is the current key; rotate before retiring it")

// ErrUnknownKey means no key has that id.
var ErrUnknownKey = errors.New("no such key")

// ErrNoRing means data_dir/keys holds no ring.json.
var ErrNoRing = errors.New("no signing keys")

// LoadRing loads the ring in dir; unlike OpenRing it generates nothing, and
// returns an error wrapping ErrNoRing when dir holds no ring.json.
func LoadRing(dir, serverName string) (*Ring, error) {
	fs := &fileRing{dir: dir}
	r := &Ring{src: fs, server: serverName}
	if _, err := os.Stat(fs.ringPath()); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", fs.ringPath(), ErrNoRing)
	}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// SetRecorder makes every later load of the ring (a reload after `herald
// keys rotate`, Rotate itself) first call record with all key ids, and keep
// the previous keys if it fails: the server records in its database each
// key before signing anything with it.
func (r *Ring) SetRecorder(record func(ids []string) error) {
	r.mu.Lock()
	r.record = record
	r.mu.Unlock()
}

// IDs lists every key id, sorted.
func (r *Ring) IDs() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, 0, len(r.keys))
	for id := range r.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// OpenRing loads the ring in dir, generating a first key if there is none.
func OpenRing(dir, serverName string) (*Ring, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	fs := &fileRing{dir: dir}
	r := &Ring{src: fs, server: serverName}
	if _, err := os.Stat(fs.ringPath()); errors.Is(err, os.ErrNotExist) {
		if _, err := r.Rotate(); err != nil {
			return nil, err
		}
		return r, nil
	}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// ServerName is the name Herald signs as.
func (r *Ring) ServerName() string { return r.server }

// opTimeout bounds a ring operation on a database (the methods of Ring take
// no context).
const opTimeout = 30 * time.Second

func (r *Ring) load() error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return r.loadContext(ctx)
}

func (r *Ring) loadContext(ctx context.Context) error {
	list, stamp, err := r.src.read(ctx)
	if err != nil {
		return err
	}
	keys := map[string]*Key{}
	byPub := map[string]*Key{}
	var cur *Key
	for _, k := range list {
		keys[k.ID] = k
		byPub[k.PublicBase64()] = k
		if k.Current {
			cur = k
		}
	}
	if cur == nil || !cur.Valid() {
		return fmt.Errorf("keys: %s names no valid current key", r.src.where())
	}
	r.mu.RLock()
	record := r.record
	r.mu.RUnlock()
	if record != nil {
		ids := make([]string, 0, len(keys))
		for id := range keys {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		if err := record(ids); err != nil {
			return fmt.Errorf("keys: recording key ids in the database: %w", err)
		}
	}
	r.mu.Lock()
	r.keys, r.byPub, r.current, r.stamp = keys, byPub, cur, stamp
	r.mu.Unlock()
	return nil
}

// ReloadIfChanged re-reads the ring when it changed in its store (ring.json
// on disk after a `herald keys` command, or the database after a rotation
// on another replica), so a running server picks the change up.
func (r *Ring) ReloadIfChanged() error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return r.Reload(ctx, false)
}

// Reload re-reads the ring from its store: always when force is set,
// otherwise only when the store's stamp changed. The wiring calls it on an
// interval and, with PostgreSQL, whenever NotifyChannel is signalled, so a
// key rotated or retired on one replica signs (or stops being published) on
// every replica within the interval.
func (r *Ring) Reload(ctx context.Context, force bool) error {
	if !force {
		st, err := r.src.stamp(ctx)
		if err != nil {
			return err
		}
		r.mu.RLock()
		same := st == r.stamp
		r.mu.RUnlock()
		if same {
			return nil
		}
	}
	return r.loadContext(ctx)
}

// Current is the key new signatures are made with.
func (r *Ring) Current() Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return *r.current
}

// Get returns the key with that id, retired or not.
func (r *Ring) Get(id string) (Key, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.keys[id]
	if !ok {
		return Key{}, false
	}
	return *k, true
}

// Published returns the key with that id if it is still published.
func (r *Ring) Published(id string) (Key, bool) {
	k, ok := r.Get(id)
	if !ok || !k.Valid() {
		return Key{}, false
	}
	return k, true
}

// IsValidPublic reports whether pub (unpadded base64) is a published long-term key.
func (r *Ring) IsValidPublic(pub string) bool {
	return r.isValidPublic([]byte(pub))
}

// isValidPublic is IsValidPublic for a key the HTTP handler decoded into
// its own buffer (the map lookup by string(pub) makes no string).
func (r *Ring) isValidPublic(pub []byte) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.byPub[string(pub)]
	if !ok {
		if b, err := DecodeBase64(string(pub)); err == nil {
			k, ok = r.byPub[EncodeBase64(b)]
		}
	}
	return ok && k.Valid()
}

// List returns every key, newest first.
func (r *Ring) List() []Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Key, 0, len(r.keys))
	for _, k := range r.keys {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// Sign signs obj with the current key under Herald's server name.
func (r *Ring) Sign(obj any) (map[string]json.RawMessage, error) {
	k := r.Current()
	return SignJSON(obj, r.server, k.ID, k.Private)
}

// Rotate makes a new current key. Older keys stay published until retired.
func (r *Ring) Rotate() (Key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, err
	}
	k := Key{ID: "ed25519:" + newKeyName(), Public: pub, Private: priv, Created: time.Now().UTC().Truncate(time.Microsecond), Current: true}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := r.src.rotate(ctx, k); err != nil {
		return Key{}, err
	}
	if err := r.loadContext(ctx); err != nil {
		return Key{}, err
	}
	return k, nil
}

// Retire stops publishing a key: isvalid answers false for it from now on.
// The current key cannot be retired; rotate first.
func (r *Ring) Retire(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := r.src.retire(ctx, id, time.Now().UTC().Truncate(time.Microsecond))
	switch {
	case errors.Is(err, ErrUnknownKey):
		return fmt.Errorf("%w: %s", ErrUnknownKey, id)
	case errors.Is(err, errCurrentKey):
		return fmt.Errorf("keys: %s %w", id, errCurrentKey)
	case err != nil:
		return err
	}
	return r.loadContext(ctx)
}

const nameAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func newKeyName() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = nameAlphabet[int(b[i])%len(nameAlphabet)]
	}
	return "h_" + string(b)
}

func writeJWK(path, id string, priv ed25519.PrivateKey) error {
	jwk := jose.JSONWebKey{Key: priv, KeyID: id, Algorithm: string(jose.EdDSA), Use: "sig"}
	raw, err := jwk.MarshalJSON()
	if err != nil {
		return fmt.Errorf("keys: encode JWK: %w", err)
	}
	return writeFileAtomic(path, raw)
}

func readJWK(path, id string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("keys: %s: %w", path, err)
	}
	priv, ok := jwk.Key.(ed25519.PrivateKey)
	if !ok || jwk.Algorithm != string(jose.EdDSA) || len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("keys: %s is not an EdDSA (ed25519) private key", path)
	}
	if jwk.KeyID != id {
		return nil, fmt.Errorf("keys: %s holds key %q, want %q", path, jwk.KeyID, id)
	}
	// A JWK carries the private seed (d) and the public key (x) apart, and
	// go-jose joins them unchecked: a file whose x is another key's would
	// make Herald publish one key and sign with another. The public key is
	// derived from the seed and must be the one the file states.
	derived := ed25519.NewKeyFromSeed(priv.Seed())
	if !derived.Public().(ed25519.PublicKey).Equal(priv.Public()) {
		return nil, fmt.Errorf("keys: %s: its public key (x) is not the one its private key (d) derives; the file was altered or mixed up: restore it from a backup", path)
	}
	return derived, nil
}

// writeFileAtomic writes via a temporary file, fsync and rename, mode 0600.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
