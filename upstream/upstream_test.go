package upstream

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/keys"
)

// fakeIS is an identity server and the service user's homeserver in one:
// it records what Herald sent and can be told to refuse tokens, rotate its
// pepper or offer only "none".
type fakeIS struct {
	t   *testing.T
	srv *httptest.Server
	key ed25519.PrivateKey

	mu            sync.Mutex
	pepper        string
	algorithms    []string
	bound         map[string]string // address -> mxid
	tokens        map[string]bool
	registrations int
	lookups       []map[string]any
	refuseNext    bool // the next /lookup answers 401
	notAfter      time.Time
	now           func() time.Time
	broken        bool // every identity request answers 500
	requests      int
}

func newFakeIS(t *testing.T, now func() time.Time) *fakeIS {
	_, priv := keys.NewEphemeralKey()
	f := &fakeIS{t: t, key: priv, pepper: "pepper1", algorithms: []string{"sha256", "none"}, bound: map[string]string{},
		tokens: map[string]bool{}, now: now}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIS) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	bearer := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.requests++
	if f.broken && strings.HasPrefix(r.URL.Path, "/_matrix/identity/") {
		reply(500, map[string]string{"errcode": "M_UNKNOWN"})
		return
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/openid/request_token"):
		if bearer != "svc-token" {
			reply(401, map[string]string{"errcode": "M_UNKNOWN_TOKEN"})
			return
		}
		reply(200, map[string]any{"access_token": "oid", "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600})
	case r.URL.Path == "/_matrix/identity/v2/account/register":
		f.registrations++
		tok := "tok" + string(rune('0'+f.registrations))
		f.tokens[tok] = true
		reply(200, map[string]string{"token": tok})
	case r.URL.Path == "/_matrix/identity/v2/terms":
		reply(200, map[string]any{"policies": map[string]any{}})
	case r.URL.Path == "/_matrix/identity/v2/hash_details":
		reply(200, map[string]any{"algorithms": f.algorithms, "lookup_pepper": f.pepper})
	case r.URL.Path == "/_matrix/identity/v2/lookup":
		if !f.tokens[bearer] || f.refuseNext {
			f.refuseNext = false
			reply(401, map[string]string{"errcode": "M_UNAUTHORIZED"})
			return
		}
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.lookups = append(f.lookups, req)
		if req["pepper"] != f.pepper {
			reply(400, map[string]string{"errcode": "M_INVALID_PEPPER"})
			return
		}
		mappings := map[string]string{}
		for addr, mxid := range f.bound {
			h := sha256.Sum256([]byte(addr + " email " + f.pepper))
			mappings[base64.RawURLEncoding.EncodeToString(h[:])] = mxid
			mappings[addr+" email"] = mxid
		}
		out := map[string]string{}
		for _, a := range req["addresses"].([]any) {
			if m, ok := mappings[a.(string)]; ok && (req["algorithm"] == "sha256") == !strings.Contains(a.(string), " ") {
				out[a.(string)] = m
			}
		}
		reply(200, map[string]any{"mappings": out})
	case r.URL.Path == "/_matrix/identity/api/v1/lookup":
		addr := r.URL.Query().Get("address")
		mxid, ok := f.bound[addr]
		if !ok {
			reply(200, map[string]any{})
			return
		}
		now := f.now()
		na := f.notAfter
		if na.IsZero() {
			na = now.Add(24 * time.Hour)
		}
		signed, err := keys.SignJSON(map[string]any{"address": addr, "medium": "email", "mxid": mxid,
			"not_before": now.Add(-time.Hour).UnixMilli(), "not_after": na.UnixMilli(), "ts": now.Add(-time.Hour).UnixMilli()},
			"fake.test", "ed25519:0", f.key)
		if err != nil {
			f.t.Error(err)
		}
		reply(200, signed)
	case r.URL.Path == "/_matrix/identity/v2/pubkey/ed25519:0":
		reply(200, map[string]string{"public_key": keys.EncodeBase64(f.key.Public().(ed25519.PublicKey))})
	default:
		reply(404, map[string]string{"errcode": "M_UNRECOGNIZED"})
	}
}

func (f *fakeIS) state() (registrations, lookups int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registrations, len(f.lookups)
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type observed struct {
	mu      sync.Mutex
	results []string
}

func (o *observed) add(_, result, reason string) {
	o.mu.Lock()
	o.results = append(o.results, strings.TrimSuffix(result+":"+reason, ":"))
	o.mu.Unlock()
}

func (o *observed) last() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.results) == 0 {
		return ""
	}
	return o.results[len(o.results)-1]
}

func newService(t *testing.T, f *fakeIS, clock *testClock, mod func(*config.Upstream)) (*Service, *observed) {
	u := config.Upstream{BaseURL: f.srv.URL, HomeserverURL: f.srv.URL, UserID: "@herald:hs.test", AccessToken: "svc-token", AllowPrivate: true}
	if mod != nil {
		mod(&u)
	}
	o := &observed{}
	s := New(Options{Servers: []config.Upstream{u}, Timeout: 2 * time.Second, Now: clock.now, OnLookup: o.add,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return s, o
}

func TestLookupHashesWithTheUpstreamsPepperAndVerifies(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	f.bound["bob@example.org"] = "@bob:hs.test"
	s, o := newService(t, f, clock, nil)
	a, ok := s.Lookup(context.Background(), "bob@example.org")
	if !ok || a.MXID != "@bob:hs.test" || a.Upstream != f.srv.URL || o.last() != "hit" {
		t.Fatalf("lookup: %+v %v %v", a, ok, o.results)
	}
	sum := sha256.Sum256([]byte("bob@example.org email pepper1"))
	got := f.lookups[0]
	if got["algorithm"] != "sha256" || got["pepper"] != "pepper1" || got["addresses"].([]any)[0] != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Fatalf("hashed lookup sent %v", got)
	}
	if _, ok := s.Lookup(context.Background(), "nobody@example.org"); ok || o.last() != "miss" {
		t.Fatalf("unknown address: %v %v", ok, o.results)
	}
}

// A refused access token makes Herald register again and retry once; a
// rotated pepper makes it fetch hash_details again and retry once.
func TestLookupReRegistersAndFollowsPepperRotation(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	f.bound["bob@example.org"] = "@bob:hs.test"
	s, o := newService(t, f, clock, nil)
	if _, ok := s.Lookup(context.Background(), "nobody1@example.org"); ok {
		t.Fatal("hit for an unknown address")
	}
	f.mu.Lock()
	f.refuseNext = true
	f.mu.Unlock()
	if _, ok := s.Lookup(context.Background(), "bob@example.org"); !ok {
		t.Fatalf("after a refused token: %v", o.results)
	}
	if reg, _ := f.state(); reg != 2 {
		t.Fatalf("registrations %d, want 2", reg)
	}
	f.mu.Lock()
	f.pepper = "pepper2"
	f.mu.Unlock()
	if _, ok := s.Lookup(context.Background(), "nobody2@example.org"); ok || o.last() != "miss" {
		t.Fatalf("after pepper rotation: %v", o.results)
	}
	f.mu.Lock()
	last := f.lookups[len(f.lookups)-1]
	f.mu.Unlock()
	if last["pepper"] != "pepper2" {
		t.Fatalf("last lookup used pepper %v", last["pepper"])
	}
}

// An upstream offering only "none" is skipped unless allow_plaintext is set.
func TestPlaintextOnlyWithAllowPlaintext(t *testing.T) {
	clock := &testClock{t: time.Now()}
	for _, allow := range []bool{false, true} {
		f := newFakeIS(t, clock.now)
		f.algorithms = []string{"none"}
		f.bound["bob@example.org"] = "@bob:hs.test"
		s, o := newService(t, f, clock, func(u *config.Upstream) { u.AllowPlaintext = allow })
		_, ok := s.Lookup(context.Background(), "bob@example.org")
		_, n := f.state()
		if !allow && (ok || n != 0 || o.last() != "failure:"+ReasonNoHash) {
			t.Fatalf("without allow_plaintext: hit %v, %d lookups sent, %v", ok, n, o.results)
		}
		if allow && (!ok || f.lookups[0]["addresses"].([]any)[0] != "bob@example.org email") {
			t.Fatalf("with allow_plaintext: hit %v, %v", ok, f.lookups)
		}
	}
}

// An association past its not_after is not accepted.
func TestExpiredAssociationIgnored(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	f.bound["bob@example.org"] = "@bob:hs.test"
	f.notAfter = clock.now().Add(-time.Minute)
	s, o := newService(t, f, clock, nil)
	if _, ok := s.Lookup(context.Background(), "bob@example.org"); ok || o.last() != "failure:"+ReasonBadSignature {
		t.Fatalf("expired association: %v %v", ok, o.results)
	}
}

// Answers are remembered for their TTL (positive 10 min, negative 5 min)
// and asked again after it.
func TestCacheHonoursTTL(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	f.bound["bob@example.org"] = "@bob:hs.test"
	s, _ := newService(t, f, clock, nil)
	ask := func(addr string, wantLookups int) {
		t.Helper()
		s.Lookup(context.Background(), addr)
		if _, n := f.state(); n != wantLookups {
			t.Fatalf("after asking about %s: %d lookups sent, want %d", addr, n, wantLookups)
		}
	}
	ask("bob@example.org", 1)
	ask("nobody@example.org", 2)
	clock.add(4 * time.Minute)
	ask("bob@example.org", 2)
	ask("nobody@example.org", 2)
	clock.add(2 * time.Minute) // 6 min: the negative answer expired
	ask("nobody@example.org", 3)
	ask("bob@example.org", 3)
	clock.add(5 * time.Minute) // 11 min: the positive one too
	ask("bob@example.org", 4)
}

// Without allow_private, an upstream on a loopback address is refused by
// the outbound policy before any request is sent.
func TestPrivateAddressRefusedByDefault(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	s, o := newService(t, f, clock, func(u *config.Upstream) { u.AllowPrivate = false })
	if _, ok := s.Lookup(context.Background(), "bob@example.org"); ok || o.last() != "failure:"+ReasonUnreachable {
		t.Fatalf("loopback upstream: %v %v", ok, o.results)
	}
	if reg, n := f.state(); reg != 0 || n != 0 {
		t.Fatalf("the loopback upstream was reached: %d registrations, %d lookups", reg, n)
	}
	if st := s.Statuses(); !strings.Contains(st[0].LastError, "not allowed") {
		t.Fatalf("status %+v", st[0])
	}
}

func TestReasonOf(t *testing.T) {
	if r := reasonOf(&apiError{status: 403, code: "M_TERMS_NOT_SIGNED"}); r != ReasonTermsNotSigned {
		t.Fatal(r)
	}
	if r := reasonOf(errors.Join(errTimeout)); r != ReasonTimeout {
		t.Fatal(r)
	}
}

// Register at start leaves each upstream registered with its hash details,
// so the first lookup sends only the lookup itself; it counts no lookup.
func TestRegisterAtStart(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	s, o := newService(t, f, clock, nil)
	if st := s.Statuses(); st[0].State != "not registered yet" {
		t.Fatalf("before: %+v", st[0])
	}
	s.Register(context.Background())
	st := s.Statuses()
	if st[0].State != "ok" || st[0].Registered.IsZero() || st[0].Calls != 0 || len(o.results) != 0 {
		t.Fatalf("after Register: %+v, observed %v", st[0], o.results)
	}
	s.Lookup(context.Background(), "nobody@example.org")
	if reg, n := f.state(); reg != 1 || n != 1 {
		t.Fatalf("%d registrations, %d lookups", reg, n)
	}
}

// After three failures in a row an upstream is skipped for 30 seconds, then
// asked again.
func TestFailingUpstreamPaused(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFakeIS(t, clock.now)
	f.broken = true
	s, o := newService(t, f, clock, nil)
	requests := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.requests }
	for i := 0; i < 3; i++ {
		s.Lookup(context.Background(), "bob@example.org")
	}
	before := requests()
	s.Lookup(context.Background(), "bob@example.org")
	if requests() != before || o.last() != "failure:"+ReasonUnreachable || s.Statuses()[0].State != "failing" {
		t.Fatalf("a paused upstream was asked: %d requests, was %d; %v", requests(), before, o.results)
	}
	clock.add(20 * time.Second)
	s.Lookup(context.Background(), "bob@example.org") // still paused: not asked, and the pause is not extended
	if requests() != before {
		t.Fatalf("a paused upstream was asked")
	}
	clock.add(11 * time.Second)
	f.mu.Lock()
	f.broken = false
	f.mu.Unlock()
	if _, ok := s.Lookup(context.Background(), "bob@example.org"); ok || o.last() != "miss" || s.Statuses()[0].State != "ok" {
		t.Fatalf("after the pause: %v %+v", o.results, s.Statuses()[0])
	}
}
