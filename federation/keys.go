package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/herald-im/herald/keys"
)

// ServerKeysPath is where a homeserver publishes its signing keys.
const ServerKeysPath = "/_matrix/key/v2/server"

// ServerKeys is a homeserver's published, self-signed verify keys.
type ServerKeys struct {
	ServerName string
	Keys       map[string]ed25519.PublicKey // key id -> key
	ValidUntil time.Time
}

// keyCaches holds each Client's server key cache (*Client -> *keyCache).
var keyCaches sync.Map

type keyCache struct {
	mu sync.Mutex
	m  map[string]keyCacheEntry
}

func (c *Client) keyCache() *keyCache {
	if v, ok := keyCaches.Load(c); ok {
		return v.(*keyCache)
	}
	v, _ := keyCaches.LoadOrStore(c, &keyCache{m: map[string]keyCacheEntry{}})
	return v.(*keyCache)
}

type keyCacheEntry struct {
	keys    *ServerKeys
	err     error
	fetched time.Time
}

const (
	keysLimit        = 50 << 10
	keysMinCache     = 5 * time.Minute
	keysMaxCache     = 24 * time.Hour
	keysFailureCache = time.Minute
	// keysRefetchAfter: a key id unknown to a cached answer triggers a new
	// fetch at most this often (the server may have rotated).
	keysRefetchAfter = time.Minute
)

// ErrUnknownServerKey means the server does not publish that key id.
var ErrUnknownServerKey = errors.New("the homeserver does not publish that key")

// ServerKey returns server's published key keyID, fetching
// GET /_matrix/key/v2/server (and checking its self-signature) when the
// cached answer lacks it.
func (c *Client) ServerKey(ctx context.Context, server, keyID string) (ed25519.PublicKey, error) {
	now := time.Now()
	cache := c.keyCache()
	cache.mu.Lock()
	e, ok := cache.m[server]
	cache.mu.Unlock()
	if ok && e.keys != nil {
		if k, found := e.keys.Keys[keyID]; found && now.Before(e.keys.ValidUntil) {
			return k, nil
		}
		if now.Sub(e.fetched) < keysRefetchAfter && now.Before(e.keys.ValidUntil) {
			return nil, ErrUnknownServerKey
		}
	}
	if ok && e.err != nil && now.Sub(e.fetched) < keysFailureCache {
		return nil, e.err
	}
	sk, err := c.FetchServerKeys(ctx, server)
	cache.mu.Lock()
	cache.m[server] = keyCacheEntry{keys: sk, err: err, fetched: now}
	cache.mu.Unlock()
	if err != nil {
		return nil, err
	}
	k, found := sk.Keys[keyID]
	if !found {
		return nil, ErrUnknownServerKey
	}
	return k, nil
}

// FetchServerKeys fetches server's keys without the cache and checks that
// every verify key signed the answer as server_name == server.
func (c *Client) FetchServerKeys(ctx context.Context, server string) (*ServerKeys, error) {
	resp, err := c.Do(ctx, server, http.MethodGet, ServerKeysPath, nil, nil, nil, keysLimit)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("server keys: %s answered %d", server, resp.Status)
	}
	return ParseServerKeys(resp.Body, server, time.Now())
}

// ParseServerKeys checks a /_matrix/key/v2/server answer from server.
func ParseServerKeys(body []byte, server string, now time.Time) (*ServerKeys, error) {
	var doc struct {
		ServerName   string `json:"server_name"`
		ValidUntilTS int64  `json:"valid_until_ts"`
		VerifyKeys   map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("server keys: malformed answer: %w", err)
	}
	if doc.ServerName != server {
		return nil, fmt.Errorf("server keys: answer is for %q, not %q", doc.ServerName, server)
	}
	if len(doc.VerifyKeys) == 0 {
		return nil, errors.New("server keys: no verify_keys")
	}
	sk := &ServerKeys{ServerName: server, Keys: map[string]ed25519.PublicKey{}}
	for id, k := range doc.VerifyKeys {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		pub, err := keys.DecodeBase64(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("server keys: key %s is not an ed25519 key", id)
		}
		if err := keys.VerifyJSON(body, server, id, pub); err != nil {
			return nil, fmt.Errorf("server keys: key %s did not sign the answer: %w", id, err)
		}
		sk.Keys[id] = pub
	}
	if len(sk.Keys) == 0 {
		return nil, errors.New("server keys: no ed25519 verify key")
	}
	valid := time.UnixMilli(doc.ValidUntilTS)
	// Cache at least a little (servers publishing a past valid_until_ts
	// still work) and at most a day.
	if min := now.Add(keysMinCache); valid.Before(min) {
		valid = min
	}
	if max := now.Add(keysMaxCache); valid.After(max) {
		valid = max
	}
	sk.ValidUntil = valid
	return sk, nil
}
