package hssim

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/herald-im/herald/internal/spectest"
)

// RouteHost sends the simulator's own requests for https://host (the
// key_validity_urls in invite events) to base instead (an http://127.0.0.1
// test server), as DNS pointing the old identity server's name at Herald
// would. Every answer is checked against the Matrix spec.
func (s *Sim) RouteHost(t testing.TB, host, base string) {
	t.Helper()
	to, err := url.Parse(base)
	if err != nil {
		t.Fatalf("hssim: RouteHost %q: %v", base, err)
	}
	next := spectest.Transport(t, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.client.Transport
	if prev == nil {
		prev = http.DefaultTransport
	}
	s.client.Transport = roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != host {
			return prev.RoundTrip(r)
		}
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host = to.Scheme, to.Host
		r.Host = host
		return next.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
