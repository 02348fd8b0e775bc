package federation

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestForbidden(t *testing.T) {
	forbidden := []string{
		"127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"100.64.0.1", "100.127.255.254", // CGNAT
		"169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
		"::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", // IPv4-mapped
		"2002:7f00:1::1", "2002:a00:1::", "2002:c0a8:101::1", // 6to4 embedding 127.0.0.1, 10.0.0.1, 192.168.1.1
		"64:ff9b::7f00:1",                  // NAT64
		"::7f00:1", "::a00:1", "::808:808", // IPv4-compatible (::/96), deprecated: refused whole
		"64:ff9b:1::a00:1", "64:ff9b:1:ffff::1", // local-use NAT64 (64:ff9b:1::/48)
	}
	allowed := []string{
		"8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "2606:4700:4700::1111",
		"::ffff:8.8.8.8", "2002:808:808::1", // 6to4 of a public address
		"::1:0:0:1", "64:ff9b:2::1", // just outside ::/96 and 64:ff9b:1::/48
	}
	for _, s := range forbidden {
		if !Forbidden(netip.MustParseAddr(s)) {
			t.Errorf("Forbidden(%s) = false", s)
		}
	}
	for _, s := range allowed {
		if Forbidden(netip.MustParseAddr(s)) {
			t.Errorf("Forbidden(%s) = true", s)
		}
	}
}

func TestRefusePrivate(t *testing.T) {
	for addr, bad := range map[string]bool{
		"127.0.0.1:8448":         true,
		"[::1]:443":              true,
		"[::ffff:10.0.0.1]:443":  true,
		"[2002:7f00:1::1]:443":   true,
		"[::7f00:1]:443":         true,
		"[64:ff9b:1::a00:1]:443": true,
		"100.64.1.1:443":         true,
		"93.184.216.34:443":      false,
		"[2606:4700::1111]:8448": false,
	} {
		err := refusePrivate("tcp", addr, nil)
		if bad != errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("refusePrivate(%s) = %v", addr, err)
		}
	}
	if refusePrivate("tcp", "no-port", nil) == nil {
		t.Error("refusePrivate accepted an address without a port")
	}
}

func TestPrivateAddressesRefused(t *testing.T) {
	var hits int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	c := New(Options{Servers: map[string]string{"hs.test": srv.URL}, Timeout: 5 * time.Second})
	_, err := c.Do(context.Background(), "hs.test", "GET", "/x", nil, nil, nil, 1024)
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("call to 127.0.0.1: %v", err)
	}
	// The client used for well-known lookups (which follows redirects) checks
	// every connection the same way, so no hop can reach a private address.
	resp, err := c.plain.Get(srv.URL + "/.well-known/matrix/server")
	if err == nil {
		resp.Body.Close()
	}
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("well-known fetch from 127.0.0.1: %v", err)
	}
	if hits != 0 {
		t.Fatalf("%d requests reached the private server", hits)
	}
}

func TestNoRedirectsFollowed(t *testing.T) {
	var followed bool
	mux := http.NewServeMux()
	mux.HandleFunc("/_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed = true })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := New(Options{Servers: map[string]string{"hs.test": srv.URL}, AllowPrivateAddresses: true})
	resp, err := c.Do(context.Background(), "hs.test", "GET", "/_matrix/federation/v1/openid/userinfo", nil, nil, nil, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusFound || followed {
		t.Fatalf("redirect followed: status %d", resp.Status)
	}
	if _, err := c.UserInfo(context.Background(), "hs.test", "tok"); err == nil {
		t.Fatal("UserInfo accepted a redirect")
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := New(Options{Servers: map[string]string{"slow.test": srv.URL}, AllowPrivateAddresses: true, Timeout: 50 * time.Millisecond})
	_, err := c.Do(context.Background(), "slow.test", "GET", "/", nil, nil, nil, 1024)
	var ne net.Error
	if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("slow server: %v, want a timeout", err)
	}
}

func TestResponseLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"sub":"@a:hs.test","padding":"` + strings.Repeat("x", 10<<10) + `"}`))
	}))
	defer srv.Close()
	c := New(Options{Servers: map[string]string{"hs.test": srv.URL}, AllowPrivateAddresses: true})
	if _, err := c.UserInfo(context.Background(), "hs.test", "tok"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized userinfo: %v", err)
	}
}

func TestUserInfo(t *testing.T) {
	answers := map[string]struct {
		status int
		body   string
	}{
		"good":      {200, `{"sub":"@alice:hs.test"}`},
		"foreign":   {200, `{"sub":"@eve:evil.test"}`},
		"no-at":     {200, `{"sub":"alice:hs.test"}`},
		"malformed": {200, `{"sub":`},
		"empty":     {200, `{}`},
		"unknown":   {401, `{"errcode":"M_UNKNOWN_TOKEN","error":"x"}`},
		"broken":    {500, `{}`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[r.URL.Query().Get("access_token")]
		w.WriteHeader(a.status)
		w.Write([]byte(a.body))
	}))
	defer srv.Close()
	c := New(Options{Servers: map[string]string{"hs.test": srv.URL}, AllowPrivateAddresses: true})
	ctx := context.Background()
	if sub, err := c.UserInfo(ctx, "hs.test", "good"); err != nil || sub != "@alice:hs.test" {
		t.Fatalf("good: %q %v", sub, err)
	}
	for _, tok := range []string{"foreign", "no-at", "unknown"} {
		if _, err := c.UserInfo(ctx, "hs.test", tok); !errors.Is(err, ErrOpenIDRejected) {
			t.Errorf("%s: %v, want ErrOpenIDRejected", tok, err)
		}
	}
	for _, tok := range []string{"malformed", "empty", "broken"} {
		if _, err := c.UserInfo(ctx, "hs.test", tok); err == nil || errors.Is(err, ErrOpenIDRejected) {
			t.Errorf("%s: %v, want another error", tok, err)
		}
	}
}

// Errors carry no query string: it holds the OpenID token.
func TestErrorsHideTokens(t *testing.T) {
	c := New(Options{Servers: map[string]string{"dead.test": "http://127.0.0.1:1"}, AllowPrivateAddresses: true})
	_, err := c.UserInfo(context.Background(), "dead.test", "sekrit-openid-token")
	if err == nil {
		t.Fatal("dead server answered")
	}
	if strings.Contains(err.Error(), "sekrit") || strings.Contains(err.Error(), "access_token") {
		t.Fatalf("error reveals the token: %v", err)
	}
}
