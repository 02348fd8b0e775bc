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

	"golang.org/x/time/rate"

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

// keyCache remembers, per server name, the last answer (or failure) of its
// /_matrix/key/v2/server. It is bounded in size (keysCacheMax entries,
// expired ones dropped first, then the least recently fetched) and in time
// (an answer until its valid_until_ts, at most a day; a failure for
// keysFailureCache), and it fetches a server's keys at most once per
// keysRefetchAfter, however many requests name it, plus at most
// keysFetchBurst fetches at once and keysFetchRate a second over all servers.
type keyCache struct {
	mu      sync.Mutex
	m       map[string]*keyCacheEntry
	limiter *rate.Limiter
}

func (c *Client) keyCache() *keyCache {
	if v, ok := keyCaches.Load(c); ok {
		return v.(*keyCache)
	}
	v, _ := keyCaches.LoadOrStore(c, &keyCache{m: map[string]*keyCacheEntry{}, limiter: rate.NewLimiter(keysFetchRate, keysFetchBurst)})
	return v.(*keyCache)
}

type keyCacheEntry struct {
	keys    *ServerKeys
	err     error
	fetched time.Time     // when the last fetch started
	done    chan struct{} // non-nil while a fetch is running; closed when it ends
}

// expired says whether e is worth nothing any more at now.
func (e *keyCacheEntry) expired(now time.Time) bool {
	if e.done != nil {
		return false
	}
	if e.keys != nil {
		return !now.Before(e.keys.ValidUntil)
	}
	return now.Sub(e.fetched) >= keysFailureCache
}

const (
	keysLimit        = 50 << 10
	keysMinCache     = 5 * time.Minute
	keysMaxCache     = 24 * time.Hour
	keysFailureCache = time.Minute
	// keysRefetchAfter: a key id unknown to a cached answer triggers a new
	// fetch at most this often (the server may have rotated).
	keysRefetchAfter = time.Minute
	// keysCacheMax bounds the number of servers remembered.
	keysCacheMax = 1024
	// keysFetchRate and keysFetchBurst bound fetches over all servers.
	keysFetchRate  = rate.Limit(5)
	keysFetchBurst = 20
)

// ErrUnknownServerKey means the server does not publish that key id.
var ErrUnknownServerKey = errors.New("the homeserver does not publish that key")

// ErrKeyFetchLimited means a server's keys were not fetched because too many
// fetches were made recently; the request can be retried later.
var ErrKeyFetchLimited = errors.New("too many server key fetches: try again later")

// ServerKey returns server's published key keyID, fetching
// GET /_matrix/key/v2/server (and checking its self-signature) when the
// cached answer lacks it and the fetch limits allow one.
func (c *Client) ServerKey(ctx context.Context, server, keyID string) (ed25519.PublicKey, error) {
	cache := c.keyCache()
	for {
		now := c.now()
		cache.mu.Lock()
		e, ok := cache.m[server]
		if ok && e.done != nil {
			// Another request is fetching this server's keys: wait for it.
			done := e.done
			cache.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if ok && !e.expired(now) {
			if e.keys != nil {
				if k, found := e.keys.Keys[keyID]; found {
					cache.mu.Unlock()
					return k, nil
				}
			}
			if now.Sub(e.fetched) < keysRefetchAfter {
				err := e.err
				cache.mu.Unlock()
				if err == nil {
					err = ErrUnknownServerKey
				}
				return nil, err
			}
		}
		if !cache.limiter.AllowN(now, 1) {
			cache.mu.Unlock()
			return nil, ErrKeyFetchLimited
		}
		if !ok {
			cache.makeRoom(now)
			e = &keyCacheEntry{}
			cache.m[server] = e
		}
		e.fetched, e.done = now, make(chan struct{})
		done := e.done
		cache.mu.Unlock()

		sk, err := c.FetchServerKeys(ctx, server)
		cache.mu.Lock()
		if err != nil && e.keys != nil && c.now().Before(e.keys.ValidUntil) {
			// Keep the keys still valid; the failure only delays the next fetch.
			err = nil
		} else {
			e.keys, e.err = sk, err
		}
		e.done = nil
		close(done)
		got := e.keys
		cache.mu.Unlock()
		if err != nil {
			return nil, err
		}
		k, found := got.Keys[keyID]
		if !found {
			return nil, ErrUnknownServerKey
		}
		return k, nil
	}
}

// makeRoom drops expired entries when the cache is full, then the least
// recently fetched ones until there is room for one more. c.mu is held.
func (c *keyCache) makeRoom(now time.Time) {
	if len(c.m) < keysCacheMax {
		return
	}
	for name, e := range c.m {
		if e.expired(now) {
			delete(c.m, name)
		}
	}
	for len(c.m) >= keysCacheMax {
		oldest := ""
		for name, e := range c.m {
			if e.done == nil && (oldest == "" || e.fetched.Before(c.m[oldest].fetched)) {
				oldest = name
			}
		}
		if oldest == "" {
			return // every entry is being fetched: at most keysFetchBurst over
		}
		delete(c.m, oldest)
	}
}

// cachedServers is how many servers the key cache remembers (for tests).
func (c *Client) cachedServers() int {
	cache := c.keyCache()
	cache.mu.Lock()
	defer cache.mu.Unlock()
	return len(cache.m)
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
	return ParseServerKeys(resp.Body, server, c.now())
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
