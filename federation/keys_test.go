package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/herald-im/herald/keys"
)

func TestParseServerKeys(t *testing.T) {
	pub, priv := keys.NewEphemeralKey()
	now := time.Now()
	doc := func(server string, validUntil time.Time, signer string) []byte {
		obj := map[string]any{"server_name": server, "valid_until_ts": validUntil.UnixMilli(),
			"verify_keys": map[string]any{"ed25519:a": map[string]string{"key": keys.EncodeBase64(pub)}}}
		signed, err := keys.SignJSON(obj, signer, "ed25519:a", priv)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(signed)
		return raw
	}
	sk, err := ParseServerKeys(doc("hs.test", now.Add(48*time.Hour), "hs.test"), "hs.test", now)
	if err != nil || len(sk.Keys["ed25519:a"]) != 32 {
		t.Fatalf("good answer: %v", err)
	}
	if sk.ValidUntil.After(now.Add(24*time.Hour)) || sk.ValidUntil.Before(now.Add(23*time.Hour)) {
		t.Errorf("cache time not capped at a day: %v", sk.ValidUntil.Sub(now))
	}
	if sk, _ := ParseServerKeys(doc("hs.test", now.Add(-time.Hour), "hs.test"), "hs.test", now); sk == nil || !sk.ValidUntil.After(now) {
		t.Errorf("a past valid_until_ts is still cached briefly")
	}
	for name, c := range map[string]struct {
		raw    []byte
		server string
	}{
		"other server":    {doc("evil.test", now.Add(time.Hour), "evil.test"), "hs.test"},
		"not self-signed": {doc("hs.test", now.Add(time.Hour), "evil.test"), "hs.test"},
		"tampered":        {[]byte(strings.Replace(string(doc("hs.test", now.Add(time.Hour), "hs.test")), `"server_name":"hs.test"`, `"server_name":"hs.test","x":1`, 1)), "hs.test"},
		"not json":        {[]byte("{"), "hs.test"},
		"no verify keys":  {[]byte(`{"server_name":"hs.test","verify_keys":{}}`), "hs.test"},
	} {
		if _, err := ParseServerKeys(c.raw, c.server, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUnrecognizedRoute(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		want   bool
	}{
		{404, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, true},
		{405, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, true},
		{404, `404 page not found`, true},
		{404, `{"errcode":"M_NOT_FOUND","error":"unknown room"}`, false},
		{400, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, false},
		{200, `{}`, false},
	} {
		if got := unrecognizedRoute(&Response{Status: c.status, Body: []byte(c.body)}); got != c.want {
			t.Errorf("%d %s: %v, want %v", c.status, c.body, got, c.want)
		}
	}
}

// The server key cache stays bounded however many servers are named, a
// server's keys are fetched at most once a minute however many requests name
// it (answer or failure), and a burst of fresh names is cut off by the global
// fetch limit.
func TestServerKeyCacheBounded(t *testing.T) {
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	pub, priv := keys.NewEphemeralKey()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		obj := map[string]any{"server_name": "hs.test", "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
			"verify_keys": map[string]any{"ed25519:a": map[string]string{"key": keys.EncodeBase64(pub)}}}
		signed, _ := keys.SignJSON(obj, "hs.test", "ed25519:a", priv)
		_ = json.NewEncoder(w).Encode(signed)
	}))
	defer good.Close()
	servers := map[string]string{"hs.test": good.URL}
	n := keysCacheMax + 200
	for i := range n {
		servers[fmt.Sprintf("s%d.test", i)] = srv.URL
	}
	c := New(Options{Servers: servers, AllowPrivateAddresses: true})
	now := time.Now()
	c.now = func() time.Time { return now }
	ctx := context.Background()

	// The global limit: a burst of fresh names fetches keysFetchBurst times.
	for i := range keysFetchBurst + 10 {
		if _, err := c.ServerKey(ctx, fmt.Sprintf("s%d.test", i), "ed25519:a"); err == nil {
			t.Fatal("a failing server gave a key")
		}
	}
	if got := fetches.Load(); got != keysFetchBurst {
		t.Fatalf("%d fetches for a burst of %d names, want %d", got, keysFetchBurst+10, keysFetchBurst)
	}

	// Without the global limit, many names: the cache stays bounded.
	c.keyCache().limiter = rate.NewLimiter(rate.Inf, 0)
	fetches.Store(0)
	for i := range n {
		_, _ = c.ServerKey(ctx, fmt.Sprintf("s%d.test", i), "ed25519:a")
	}
	if got := c.cachedServers(); got > keysCacheMax {
		t.Fatalf("cache holds %d servers, bound is %d", got, keysCacheMax)
	}
	// Per server: a failure is not fetched again within a minute.
	fetches.Store(0)
	for range 50 {
		_, _ = c.ServerKey(ctx, fmt.Sprintf("s%d.test", n-1), "ed25519:a")
	}
	if got := fetches.Load(); got != 0 {
		t.Fatalf("a cached failure was fetched again %d times", got)
	}
	now = now.Add(keysFailureCache)
	_, _ = c.ServerKey(ctx, fmt.Sprintf("s%d.test", n-1), "ed25519:a")
	if got := fetches.Load(); got != 1 {
		t.Fatalf("after a minute: %d fetches, want 1", got)
	}

	// A good server: fetched once; an unknown key id refetches at most once a minute.
	fetches.Store(0)
	for range 20 {
		if k, err := c.ServerKey(ctx, "hs.test", "ed25519:a"); err != nil || !k.Equal(pub) {
			t.Fatalf("good server: %v", err)
		}
		if _, err := c.ServerKey(ctx, "hs.test", "ed25519:rotated"); !errors.Is(err, ErrUnknownServerKey) {
			t.Fatalf("unknown key id: %v", err)
		}
	}
	if got := fetches.Load(); got != 1 {
		t.Fatalf("good server fetched %d times, want 1", got)
	}
	now = now.Add(keysRefetchAfter)
	_, _ = c.ServerKey(ctx, "hs.test", "ed25519:rotated")
	if k, err := c.ServerKey(ctx, "hs.test", "ed25519:a"); err != nil || !k.Equal(pub) || fetches.Load() != 2 {
		t.Fatalf("after a refetch: %v, %d fetches", err, fetches.Load())
	}
}

// Concurrent requests naming the same server share one fetch.
func TestServerKeyConcurrentRequestsShareOneFetch(t *testing.T) {
	var fetches atomic.Int64
	release := make(chan struct{})
	pub, priv := keys.NewEphemeralKey()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		<-release
		obj := map[string]any{"server_name": "hs.test", "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
			"verify_keys": map[string]any{"ed25519:a": map[string]string{"key": keys.EncodeBase64(pub)}}}
		signed, _ := keys.SignJSON(obj, "hs.test", "ed25519:a", priv)
		_ = json.NewEncoder(w).Encode(signed)
	}))
	defer srv.Close()
	c := New(Options{Servers: map[string]string{"hs.test": srv.URL}, AllowPrivateAddresses: true})
	errs := make(chan error, 50)
	for range 50 {
		go func() {
			k, err := c.ServerKey(context.Background(), "hs.test", "ed25519:a")
			if err == nil && !k.Equal(pub) {
				err = errors.New("wrong key")
			}
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for fetches.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	for range 50 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for 50 concurrent requests", n)
	}
}
