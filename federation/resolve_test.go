package federation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// discovery is a test world: a TLS "homeserver" answering userinfo, a TLS
// server answering /.well-known/matrix/server, names mapped onto them by
// the dialer, a stub SRV resolver and a clock.
type discovery struct {
	t  *testing.T
	c  *Client
	hs *httptest.Server
	wk *httptest.Server

	mu        sync.Mutex
	wellKnown string      // body of /.well-known/matrix/server ("" = 404)
	wkHeader  http.Header // extra headers of that answer
	wkHits    int
	hsHits    []*http.Request // host and TLS server name of each userinfo call
	srv       map[string][]*net.SRV
	srvCalls  []string
	now       time.Time
}

func newDiscovery(t *testing.T, allowPrivate bool, addrs map[string]string) *discovery {
	d := &discovery{t: t, srv: map[string][]*net.SRV{}, now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), wkHeader: http.Header{}}
	d.hs = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.hsHits = append(d.hsHits, r)
		d.mu.Unlock()
		if r.URL.Path != "/_matrix/federation/v1/openid/userinfo" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"sub":"@alice:` + r.URL.Query().Get("access_token") + `"}`))
	}))
	d.wk = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.wkHits++
		if r.URL.Path != "/.well-known/matrix/server" || d.wellKnown == "" {
			http.NotFound(w, r)
			return
		}
		for k, v := range d.wkHeader {
			w.Header()[k] = v
		}
		w.Write([]byte(d.wellKnown))
	}))
	t.Cleanup(d.hs.Close)
	t.Cleanup(d.wk.Close)
	hsAddr, wkAddr := d.hs.Listener.Addr().String(), d.wk.Listener.Addr().String()
	d.c = New(Options{
		AllowPrivateAddresses: allowPrivate,
		InsecureSkipVerify:    true, // httptest's certificate; the TLS server name is checked below
		Timeout:               5 * time.Second,
		dialAddr: func(addr string) string {
			switch addrs[addr] {
			case "hs":
				return hsAddr
			case "wk":
				return wkAddr
			}
			if h, _, _ := net.SplitHostPort(addr); isIP(h) {
				return addr
			}
			return "127.0.0.1:1" // nothing listens: connection refused
		},
	})
	d.c.now = func() time.Time { d.mu.Lock(); defer d.mu.Unlock(); return d.now }
	d.c.lookupSRV = func(_ context.Context, host string) ([]*net.SRV, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.srvCalls = append(d.srvCalls, host)
		if s, ok := d.srv[host]; ok {
			return s, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: "_matrix-fed._tcp." + host, IsNotFound: true}
	}
	return d
}

func (d *discovery) setWellKnown(body string) {
	d.mu.Lock()
	d.wellKnown = body
	d.mu.Unlock()
}

func (d *discovery) advance(by time.Duration) {
	d.mu.Lock()
	d.now = d.now.Add(by)
	d.mu.Unlock()
}

// userInfo checks a token at server through discovery and returns the Host
// header and TLS server name the homeserver saw.
func (d *discovery) userInfo(server string) (host, sni string) {
	d.t.Helper()
	sub, err := d.c.UserInfo(context.Background(), server, server)
	if err != nil || sub != "@alice:"+server {
		d.t.Fatalf("UserInfo(%s) = %q, %v", server, sub, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	last := d.hsHits[len(d.hsHits)-1]
	return last.Host, last.TLS.ServerName
}

func (d *discovery) hits() (wk, hs int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wkHits, len(d.hsHits)
}

func TestDiscoveryWellKnownDelegation(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{"hs.test:443": "wk", "fed.test:8448": "hs"})
	d.setWellKnown(`{"m.server": "fed.test:8448"}`)
	host, sni := d.userInfo("hs.test")
	if host != "fed.test:8448" || sni != "fed.test" {
		t.Fatalf("delegated call: Host %q, TLS name %q", host, sni)
	}
	if len(d.srvCalls) != 0 {
		t.Errorf("SRV looked up despite an explicit port: %v", d.srvCalls)
	}
	// Cached for 24 hours without a max-age.
	d.advance(23 * time.Hour)
	d.userInfo("hs.test")
	if wk, hs := d.hits(); wk != 1 || hs != 2 {
		t.Fatalf("after 23h: %d well-known fetches, %d calls", wk, hs)
	}
	d.advance(2 * time.Hour)
	d.userInfo("hs.test")
	if wk, _ := d.hits(); wk != 2 {
		t.Fatalf("after 25h: %d well-known fetches, want a refetch", wk)
	}
}

func TestDiscoveryWellKnownMaxAge(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{"hs.test:443": "wk", "fed.test:8448": "hs"})
	d.setWellKnown(`{"m.server": "fed.test:8448"}`)
	d.wkHeader.Set("Cache-Control", "public, max-age=604800") // a week: capped at 48 h
	d.userInfo("hs.test")
	d.advance(47 * time.Hour)
	d.userInfo("hs.test")
	if wk, _ := d.hits(); wk != 1 {
		t.Fatalf("within 48h: %d fetches", wk)
	}
	d.advance(2 * time.Hour)
	d.userInfo("hs.test")
	if wk, _ := d.hits(); wk != 2 {
		t.Fatalf("after 49h: %d fetches, want a refetch", wk)
	}
}

func TestDiscoverySRVAfterWellKnownFailure(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{"hs.test:443": "wk", "target.test:1234": "hs"})
	d.srv["hs.test"] = []*net.SRV{{Target: "target.test.", Port: 1234}}
	// No well-known (404): SRV of the server name; Host and certificate
	// name stay the server name.
	host, sni := d.userInfo("hs.test")
	if host != "hs.test" || sni != "hs.test" {
		t.Fatalf("SRV call: Host %q, TLS name %q", host, sni)
	}
	// The failure is remembered for about an hour, not a day.
	d.advance(50 * time.Minute)
	d.userInfo("hs.test")
	if wk, hs := d.hits(); wk != 1 || hs != 2 {
		t.Fatalf("within the hour: %d well-known fetches, %d calls", wk, hs)
	}
	d.advance(20 * time.Minute)
	d.userInfo("hs.test")
	if wk, _ := d.hits(); wk != 2 {
		t.Fatalf("after 70 min: %d well-known fetches, want a retry", wk)
	}
}

func TestDiscoveryDelegatedHostnameSRV(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{"hs.test:443": "wk", "target.test:1234": "hs"})
	d.setWellKnown(`{"m.server": "deleg.test"}`)
	d.srv["deleg.test"] = []*net.SRV{{Target: "target.test.", Port: 1234}}
	host, sni := d.userInfo("hs.test")
	if host != "deleg.test" || sni != "deleg.test" {
		t.Fatalf("delegated SRV call: Host %q, TLS name %q", host, sni)
	}
	if len(d.srvCalls) != 1 || d.srvCalls[0] != "deleg.test" {
		t.Fatalf("SRV lookups %v, want the delegated name", d.srvCalls)
	}
}

func TestDiscoveryPort8448(t *testing.T) {
	// Well-known unreachable, no SRV record: the server name on port 8448.
	d := newDiscovery(t, true, map[string]string{"hs.test:8448": "hs"})
	host, sni := d.userInfo("hs.test")
	if host != "hs.test" || sni != "hs.test" {
		t.Fatalf("8448 call: Host %q, TLS name %q", host, sni)
	}
	if wk, _ := d.hits(); wk != 0 {
		t.Fatalf("well-known server reached: %d", wk)
	}
}

func TestDiscoveryWellKnownSizeLimit(t *testing.T) {
	pad := func(n int) string {
		return `{"m.server": "fed.test:8448", "pad": "` + strings.Repeat("x", n) + `"}`
	}
	d := newDiscovery(t, true, map[string]string{"hs.test:443": "wk", "fed.test:8448": "hs", "hs.test:8448": "hs"})
	d.setWellKnown(pad(wellKnownLimit - 100))
	if host, _ := d.userInfo("hs.test"); host != "fed.test:8448" {
		t.Fatalf("well-known under the limit ignored: Host %q", host)
	}
	d.advance(25 * time.Hour)
	d.setWellKnown(pad(wellKnownLimit)) // just over 50 KiB: ignored, as if absent
	if host, _ := d.userInfo("hs.test"); host != "hs.test" {
		t.Fatalf("oversized well-known used: Host %q", host)
	}
	for _, bad := range []string{`{"m.server": ""}`, `{"m.server": "not a name/"}`, `[`} {
		d.advance(2 * time.Hour)
		d.setWellKnown(bad)
		if host, _ := d.userInfo("hs.test"); host != "hs.test" {
			t.Fatalf("well-known %s used: Host %q", bad, host)
		}
	}
}

func TestDiscoveryIPLiteralAndPort(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{})
	addr := d.hs.Listener.Addr().String() // 127.0.0.1:PORT: used as is
	if _, err := d.c.UserInfo(context.Background(), addr, addr); err != nil {
		t.Fatal(err)
	}
	if wk, hs := d.hits(); wk != 0 || hs != 1 || len(d.srvCalls) != 0 {
		t.Fatalf("IP literal: %d well-known, %d calls, SRV %v", wk, hs, d.srvCalls)
	}
}

// Discovery goes through the private address check too: a name whose
// well-known or homeserver is on a private address is refused, and nothing
// reaches either server.
func TestDiscoveryRefusesPrivateAddresses(t *testing.T) {
	d := newDiscovery(t, false, map[string]string{"hs.test:443": "wk", "fed.test:8448": "hs", "hs.test:8448": "hs"})
	d.setWellKnown(`{"m.server": "fed.test:8448"}`)
	_, err := d.c.UserInfo(context.Background(), "hs.test", "hs.test")
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("private homeserver: %v", err)
	}
	if wk, hs := d.hits(); wk != 0 || hs != 0 {
		t.Fatalf("%d well-known fetches and %d calls reached private addresses", wk, hs)
	}
}

func TestDiscoveryInvalidName(t *testing.T) {
	d := newDiscovery(t, true, map[string]string{})
	for _, name := range []string{"", "a b", "hs.test/x", "[::1", "under_score.test", "hs.test:99999x"} {
		if _, err := d.c.UserInfo(context.Background(), name, "x"); !errors.Is(err, ErrInvalidServerName) {
			t.Errorf("%q: %v", name, err)
		}
	}
	if wk, hs := d.hits(); wk != 0 || hs != 0 {
		t.Fatalf("invalid names reached servers: %d %d", wk, hs)
	}
}

func TestWellKnownTTL(t *testing.T) {
	for cc, want := range map[string]time.Duration{
		"":                       wellKnownDefaultCache,
		"no-store":               wellKnownDefaultCache,
		"max-age=7200":           2 * time.Hour,
		"public, max-age=90000":  25 * time.Hour,
		"max-age=60":             wellKnownMinCache,
		"max-age=99999999999999": wellKnownMaxCache,
		"max-age=-5":             wellKnownDefaultCache,
		"max-age=abc":            wellKnownDefaultCache,
		`Max-Age="3600"`:         time.Hour,
	} {
		h := http.Header{}
		h.Set("Cache-Control", cc)
		if got := wellKnownTTL(h); got != want {
			t.Errorf("Cache-Control %q: %v, want %v", cc, got, want)
		}
	}
}

// The caches keyed by server name stay bounded: names come from
// unauthenticated requests.
func TestCachesBounded(t *testing.T) {
	c := New(Options{})
	for i := 0; i < resolveCacheMax+50; i++ {
		if _, _, err := c.endpoint(context.Background(), fmt.Sprintf("h%d.test:8448", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.cache); n > resolveCacheMax {
		t.Fatalf("resolution cache holds %d entries", n)
	}
	for i := 0; i < tlsClientsMax+50; i++ {
		c.withServerName(fmt.Sprintf("h%d.test", i))
	}
	if n := len(c.tlsClients); n > tlsClientsMax {
		t.Fatalf("%d TLS clients kept", n)
	}
}
