// Package keys keeps Herald's ed25519 signing keys and signs JSON the Matrix
// way. Long-term keys live as JWK files (mode 0600) in data_dir/keys with a
// small ring.json recording which is current and which are retired; per-invite
// ephemeral public keys live in their own bbolt bucket.
package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
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

type ringFile struct {
	Current string               `json:"current"`
	Keys    map[string]ringEntry `json:"keys"`
}

type ringEntry struct {
	Created time.Time `json:"created"`
	Retired time.Time `json:"retired,omitzero"`
}

// Ring is the set of long-term keys. It is safe for concurrent use.
type Ring struct {
	dir    string
	server string

	mu      sync.RWMutex
	keys    map[string]*Key
	byPub   map[string]*Key
	current *Key
	modTime time.Time

	// record, when set, is told every key id before a (re)load takes
	// effect; if it fails the ring stays as it was (SetRecorder).
	record func(ids []string) error
}

// ErrUnknownKey means no key has that id.
var ErrUnknownKey = errors.New("no such key")

// ErrNoRing means data_dir/keys holds no ring.json.
var ErrNoRing = errors.New("no signing keys")

// LoadRing loads the ring in dir; unlike OpenRing it generates nothing, and
// returns an error wrapping ErrNoRing when dir holds no ring.json.
func LoadRing(dir, serverName string) (*Ring, error) {
	r := &Ring{dir: dir, server: serverName}
	if _, err := os.Stat(r.ringPath()); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", r.ringPath(), ErrNoRing)
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
	r := &Ring{dir: dir, server: serverName}
	if _, err := os.Stat(r.ringPath()); errors.Is(err, os.ErrNotExist) {
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

func (r *Ring) ringPath() string { return filepath.Join(r.dir, "ring.json") }

func (r *Ring) keyPath(id string) string {
	return filepath.Join(r.dir, strings.ReplaceAll(id, ":", "_")+".jwk")
}

func (r *Ring) readRingFile() (ringFile, time.Time, error) {
	var rf ringFile
	st, err := os.Stat(r.ringPath())
	if err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %w", err)
	}
	raw, err := os.ReadFile(r.ringPath())
	if err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %w", err)
	}
	if err := json.Unmarshal(raw, &rf); err != nil {
		return rf, time.Time{}, fmt.Errorf("keys: %s: %w", r.ringPath(), err)
	}
	return rf, st.ModTime(), nil
}

func (r *Ring) load() error {
	rf, mt, err := r.readRingFile()
	if err != nil {
		return err
	}
	keys := map[string]*Key{}
	byPub := map[string]*Key{}
	for id, e := range rf.Keys {
		priv, err := readJWK(r.keyPath(id), id)
		if err != nil {
			return err
		}
		k := &Key{ID: id, Private: priv, Public: priv.Public().(ed25519.PublicKey), Created: e.Created, Retired: e.Retired, Current: id == rf.Current}
		keys[id] = k
		byPub[k.PublicBase64()] = k
	}
	cur, ok := keys[rf.Current]
	if !ok || !cur.Valid() {
		return fmt.Errorf("keys: %s names no valid current key", r.ringPath())
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
	r.keys, r.byPub, r.current, r.modTime = keys, byPub, cur, mt
	r.mu.Unlock()
	return nil
}

// ReloadIfChanged re-reads the ring when ring.json changed on disk (after a
// `herald keys` command), so a running server picks the change up.
func (r *Ring) ReloadIfChanged() error {
	st, err := os.Stat(r.ringPath())
	if err != nil {
		return err
	}
	r.mu.RLock()
	same := st.ModTime().Equal(r.modTime)
	r.mu.RUnlock()
	if same {
		return nil
	}
	return r.load()
}

func (r *Ring) save(rf ringFile) error {
	raw, err := json.MarshalIndent(rf, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(r.ringPath(), raw)
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
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.byPub[pub]
	if !ok {
		if b, err := DecodeBase64(pub); err == nil {
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
	id := "ed25519:" + newKeyName()
	if err := writeJWK(r.keyPath(id), id, priv); err != nil {
		return Key{}, err
	}
	rf := ringFile{Keys: map[string]ringEntry{}}
	if _, err := os.Stat(r.ringPath()); err == nil {
		if rf, _, err = r.readRingFile(); err != nil {
			return Key{}, err
		}
	}
	rf.Keys[id] = ringEntry{Created: time.Now().UTC()}
	rf.Current = id
	if err := r.save(rf); err != nil {
		return Key{}, err
	}
	if err := r.load(); err != nil {
		return Key{}, err
	}
	return Key{ID: id, Public: pub, Private: priv, Created: rf.Keys[id].Created, Current: true}, nil
}

// Retire stops publishing a key: isvalid answers false for it from now on.
// The current key cannot be retired; rotate first.
func (r *Ring) Retire(id string) error {
	rf, _, err := r.readRingFile()
	if err != nil {
		return err
	}
	e, ok := rf.Keys[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownKey, id)
	}
	if rf.Current == id {
		return fmt.Errorf("keys: %s is the current key; rotate before retiring it", id)
	}
	if !e.Retired.IsZero() {
		return nil
	}
	e.Retired = time.Now().UTC()
	rf.Keys[id] = e
	if err := r.save(rf); err != nil {
		return err
	}
	return r.load()
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
