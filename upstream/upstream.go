// Package upstream asks other identity servers (lookup.upstream) whether they
// know an email address Herald has no binding for, so store-invite can
// resolve the invite at once for the Matrix user they vouch for.
//
// For each upstream Herald holds an account there (v2 API): an OpenID token
// for the operator's service user (POST /_matrix/client/v3/user/{userId}/
// openid/request_token on homeserver_url) registers it (/v2/account/register);
// terms are accepted only when the operator set accept_terms. A lookup is a
// hashed v2 /lookup with the upstream's own pepper (sha256; the address in
// plain only with allow_plaintext). Only when the upstream answers that it
// knows the hash does Herald ask for the signed association
// (GET /_matrix/identity/api/v1/lookup), which it verifies against the
// upstream's /pubkey and the association's validity times: the upstream
// already holds that address, so the second request tells it nothing new.
// docs/upstream.md is the operator's account of what leaves Herald.
package upstream

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
)

// Lifetimes of what Herald remembers about upstreams.
const (
	positiveTTL   = 10 * time.Minute // a verified answer (and never past its not_after)
	negativeTTL   = 5 * time.Minute  // "not known upstream"
	hashTTL       = 10 * time.Minute // hash_details (a rotated pepper is refetched at once)
	keyTTL        = time.Hour        // an upstream's public keys
	termsRecheck  = 10 * time.Minute // how long an upstream with unaccepted terms is skipped
	breakerAfter  = 3                // consecutive failures before an upstream is skipped ...
	breakerPause  = 30 * time.Second // ... for this long
	cacheMax      = 4096             // answers remembered (addresses are kept only as salted hashes)
	inFlightMax   = 16               // store-invites asking at once; more skip the upstreams
	responseLimit = 64 << 10
	clockSkew     = 5 * time.Minute // an association's ts may be this far in the future
)

// Failure reasons, a fixed set for metrics.
const (
	ReasonUnreachable    = "unreachable"
	ReasonTimeout        = "timeout"
	ReasonTermsNotSigned = "terms_not_signed"
	ReasonBadSignature   = "bad_signature"
	ReasonNoHash         = "no_usable_hash"
	ReasonRefused        = "refused"
	ReasonError          = "error"
)

// Options configure a Service.
type Options struct {
	Servers   []config.Upstream
	Timeout   time.Duration // per store-invite, all upstreams together
	UserAgent string
	Log       *slog.Logger
	Now       func() time.Time
	// OnLookup, if set, is told of each question to an upstream: result
	// "hit", "miss" or "failure" (with a reason from the Reason constants).
	OnLookup func(upstream, result, reason string)
}

// Answer is an upstream's verified association of an address with a user.
type Answer struct {
	MXID     string
	Upstream string // the upstream's base_url
	At       time.Time
}

// Status is what the console shows of one upstream (its settings page):
// whether Herald is registered there, and its question, hit and failure
// counts since start.
type Status struct {
	BaseURL    string    `json:"base_url"`
	State      string    `json:"state"` // "ok", "not registered yet", "M_TERMS_NOT_SIGNED", "failing"
	LastError  string    `json:"last_error,omitempty"`
	Calls      int64     `json:"calls"`
	Hits       int64     `json:"hits"`
	Failures   int64     `json:"failures"`
	Registered time.Time `json:"registered,omitzero"`
}

// Service asks the configured upstreams.
type Service struct {
	opts     Options
	log      *slog.Logger
	servers  []*server
	inFlight chan struct{}
	salt     [32]byte

	cacheMu sync.Mutex
	cache   map[[32]byte]cached
}

type cached struct {
	answer  Answer
	found   bool
	expires time.Time
}

// New builds the Service; it makes no request until the first Lookup.
func New(opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "Herald"
	}
	s := &Service{opts: opts, log: opts.Log.With("component", "upstream"), inFlight: make(chan struct{}, inFlightMax), cache: map[[32]byte]cached{}}
	_, _ = rand.Read(s.salt[:])
	for _, c := range opts.Servers {
		s.servers = append(s.servers, newServer(c, s))
	}
	return s
}

// Enabled reports whether any upstream is configured.
func (s *Service) Enabled() bool { return s != nil && len(s.servers) > 0 }

// Lookup asks every upstream, at once, about address (normalised) and
// returns the first verified answer in configuration order. It returns within
// the configured timeout; an upstream that errs, is slow or whose answer does
// not verify counts as not knowing the address.
func (s *Service) Lookup(ctx context.Context, address string) (Answer, bool) {
	if !s.Enabled() {
		return Answer{}, false
	}
	key := sha256.Sum256(append(s.salt[:], address...))
	now := s.opts.Now()
	s.cacheMu.Lock()
	c, ok := s.cache[key]
	s.cacheMu.Unlock()
	if ok && now.Before(c.expires) {
		return c.answer, c.found
	}
	select {
	case s.inFlight <- struct{}{}:
		defer func() { <-s.inFlight }()
	default:
		s.log.Warn("too many upstream lookups at once: this invite is not looked up")
		return Answer{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	type result struct {
		mxid     string
		notAfter time.Time
		err      error
	}
	results := make([]chan result, len(s.servers))
	for i, srv := range s.servers {
		results[i] = make(chan result, 1)
		go func() {
			mxid, notAfter, err := srv.lookup(ctx, address)
			results[i] <- result{mxid, notAfter, err}
		}()
	}
	allAnswered := true
	for i, srv := range s.servers {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			r = result{err: fmt.Errorf("%w: no answer within %s", errTimeout, s.opts.Timeout)}
		}
		if r.err != nil {
			allAnswered = false
			srv.failed(r.err)
			continue
		}
		srv.succeeded()
		if r.mxid == "" {
			s.observe(srv, "miss", "")
			continue
		}
		s.observe(srv, "hit", "")
		a := Answer{MXID: r.mxid, Upstream: srv.cfg.BaseURL, At: s.opts.Now().UTC()}
		exp := now.Add(positiveTTL)
		if !r.notAfter.IsZero() && r.notAfter.Before(exp) {
			exp = r.notAfter
		}
		s.remember(key, cached{answer: a, found: true, expires: exp})
		return a, true
	}
	if allAnswered {
		// Only a "no" from every upstream is remembered: a failure is asked again.
		s.remember(key, cached{expires: now.Add(negativeTTL)})
	}
	return Answer{}, false
}

func (s *Service) observe(srv *server, result, reason string) {
	srv.mu.Lock()
	srv.calls++
	switch result {
	case "hit":
		srv.hits++
	case "failure":
		srv.failures++
	}
	srv.mu.Unlock()
	if s.opts.OnLookup != nil {
		s.opts.OnLookup(srv.name, result, reason)
	}
}

func (s *Service) remember(key [32]byte, c cached) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if len(s.cache) >= cacheMax {
		now := s.opts.Now()
		for k, v := range s.cache {
			if !now.Before(v.expires) || len(s.cache) >= cacheMax {
				delete(s.cache, k)
			}
			if len(s.cache) < cacheMax/2 {
				break
			}
		}
	}
	s.cache[key] = c
}

// Register registers Herald at every upstream that has no token yet and
// reads its hash details. Start runs it once, so that the first store-invite
// does not pay for it and the console shows each upstream's state early. A
// failure is logged and left for the first lookup to try again; it counts in
// no metric.
func (s *Service) Register(ctx context.Context) {
	if !s.Enabled() {
		return
	}
	for _, srv := range s.servers {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		token, err := srv.ensureToken(rctx)
		if err == nil {
			_, _, err = srv.hashDetails(rctx, token)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			srv.mu.Lock()
			srv.lastError = err.Error()
			srv.mu.Unlock()
			s.log.Warn("could not register at upstream identity server at start: the first lookup tries again", "upstream", srv.cfg.BaseURL, "err", err)
		}
	}
}

// Statuses describes every upstream, in configuration order, for the console.
func (s *Service) Statuses() []Status {
	if s == nil {
		return nil
	}
	out := make([]Status, 0, len(s.servers))
	for _, srv := range s.servers {
		srv.mu.Lock()
		st := Status{BaseURL: srv.cfg.BaseURL, Calls: srv.calls, Hits: srv.hits, Failures: srv.failures, LastError: srv.lastError, Registered: srv.registered}
		switch {
		case srv.termsBlocked(s.opts.Now()):
			st.State = "M_TERMS_NOT_SIGNED"
		case srv.consecutive > 0:
			st.State = "failing"
		case srv.token == "":
			st.State = "not registered yet"
		default:
			st.State = "ok"
		}
		srv.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// Names lists the metric label of every upstream (its host), so the
// counters exist at zero before the first lookup.
func (s *Service) Names() []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, srv := range s.servers {
		out = append(out, srv.name)
	}
	return out
}

var (
	errTimeout        = errors.New("timeout")
	errTermsNotSigned = errors.New("M_TERMS_NOT_SIGNED: the upstream has terms of service and accept_terms is not set for it")
	errNoHash         = errors.New("the upstream offers no sha256 lookups and allow_plaintext is not set for it")
	errBadSignature   = errors.New("the upstream's association does not verify")
	errUnreachable    = errors.New("unreachable")
	errRefused        = errors.New("refused")
)

func reasonOf(err error) string {
	switch {
	case errors.Is(err, errTimeout), errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.Is(err, errTermsNotSigned):
		return ReasonTermsNotSigned
	case errors.Is(err, errNoHash):
		return ReasonNoHash
	case errors.Is(err, errBadSignature):
		return ReasonBadSignature
	case errors.Is(err, errUnreachable):
		return ReasonUnreachable
	case errors.Is(err, errRefused):
		return ReasonRefused
	}
	return ReasonError
}

// server is one upstream and what Herald holds there.
type server struct {
	cfg  config.Upstream
	name string
	base string
	hs   string
	http *http.Client
	svc  *Service

	mu          sync.Mutex
	token       string
	registered  time.Time
	alg, pepper string
	hashAt      time.Time
	keys        map[string]pubKey
	termsUntil  time.Time // skipped until then: terms not accepted
	consecutive int       // failures in a row
	pauseUntil  time.Time
	lastError   string
	calls       int64
	hits        int64
	failures    int64
}

type pubKey struct {
	key ed25519.PublicKey
	at  time.Time
}

func newServer(c config.Upstream, s *Service) *server {
	name := c.BaseURL
	if u, err := url.Parse(c.BaseURL); err == nil && u.Host != "" {
		name = u.Host
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if !c.AllowPrivate {
		dialer.Control = refusePrivate
	}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     60 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &server{
		cfg: c, name: name, svc: s, keys: map[string]pubKey{},
		base: strings.TrimRight(c.BaseURL, "/"), hs: strings.TrimRight(c.HomeserverURL, "/"),
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
}

// refusePrivate applies Herald's outbound policy (federation.Forbidden)
// after DNS resolution, unless the operator set allow_private.
func refusePrivate(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return err
	}
	if federation.Forbidden(ip) {
		return fmt.Errorf("%w: %s", federation.ErrForbiddenAddress, ip)
	}
	return nil
}

func (srv *server) termsBlocked(now time.Time) bool { return now.Before(srv.termsUntil) }

func (srv *server) failed(err error) {
	reason := reasonOf(err)
	srv.mu.Lock()
	srv.consecutive++
	// A lookup skipped during a pause does not extend it: the upstream is
	// asked again when the pause ends.
	if now := srv.svc.opts.Now(); srv.consecutive >= breakerAfter && !now.Before(srv.pauseUntil) {
		srv.pauseUntil = now.Add(breakerPause)
	}
	changed := srv.lastError != err.Error()
	srv.lastError = err.Error()
	srv.mu.Unlock()
	srv.svc.observe(srv, "failure", reason)
	level := slog.LevelWarn
	if !changed && reason != ReasonBadSignature {
		level = slog.LevelDebug // the same failure again: logged once at warn
	}
	srv.svc.log.Log(context.Background(), level, "upstream lookup failed: the invite is emailed as usual", "upstream", srv.cfg.BaseURL, "reason", reason, "err", err)
}

func (srv *server) succeeded() {
	srv.mu.Lock()
	srv.consecutive, srv.lastError = 0, ""
	srv.mu.Unlock()
}

// lookup asks this upstream about address: its verified mxid ("" when it
// does not know the address) and the association's not_after.
func (srv *server) lookup(ctx context.Context, address string) (string, time.Time, error) {
	now := srv.svc.opts.Now()
	srv.mu.Lock()
	paused, terms := now.Before(srv.pauseUntil), srv.termsBlocked(now)
	srv.mu.Unlock()
	if terms {
		return "", time.Time{}, errTermsNotSigned
	}
	if paused {
		return "", time.Time{}, fmt.Errorf("%w: skipped for %s after %d failures in a row", errUnreachable, breakerPause, breakerAfter)
	}
	var mxid string
	var err error
	for attempt := 0; ; attempt++ {
		mxid, err = srv.hashedLookup(ctx, address)
		var ae *apiError
		if err == nil || attempt > 0 || !errors.As(err, &ae) {
			break
		}
		switch {
		case ae.status == http.StatusUnauthorized:
			srv.mu.Lock()
			srv.token = "" // refused token: register again
			srv.mu.Unlock()
		case ae.code == "M_INVALID_PEPPER":
			srv.mu.Lock()
			srv.hashAt = time.Time{}
			srv.mu.Unlock()
		case ae.code == "M_TERMS_NOT_SIGNED":
			srv.mu.Lock()
			srv.token = "" // registering again checks and (if allowed) accepts the terms
			srv.mu.Unlock()
		default:
			return "", time.Time{}, err
		}
	}
	if err != nil || mxid == "" {
		return "", time.Time{}, err
	}
	return srv.verify(ctx, address, mxid)
}

func (srv *server) hashedLookup(ctx context.Context, address string) (string, error) {
	token, err := srv.ensureToken(ctx)
	if err != nil {
		return "", err
	}
	alg, pepper, err := srv.hashDetails(ctx, token)
	if err != nil {
		return "", err
	}
	query := address + " email"
	if alg == "sha256" {
		sum := sha256.Sum256([]byte(address + " email " + pepper))
		query = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	var out struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := srv.call(ctx, "POST", srv.base+"/_matrix/identity/v2/lookup", token,
		map[string]any{"addresses": []string{query}, "algorithm": alg, "pepper": pepper}, &out); err != nil {
		return "", err
	}
	return out.Mappings[query], nil
}

// ensureToken returns Herald's access token at the upstream, registering
// (and accepting terms where allowed) first if there is none.
func (srv *server) ensureToken(ctx context.Context) (string, error) {
	srv.mu.Lock()
	token := srv.token
	srv.mu.Unlock()
	if token != "" {
		return token, nil
	}
	var oid map[string]any
	if err := srv.call(ctx, "POST", srv.hs+"/_matrix/client/v3/user/"+url.PathEscape(srv.cfg.UserID)+"/openid/request_token",
		string(srv.cfg.AccessToken), map[string]any{}, &oid); err != nil {
		return "", fmt.Errorf("OpenID token for %s from homeserver_url: %w", srv.cfg.UserID, err)
	}
	var reg struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := srv.call(ctx, "POST", srv.base+"/_matrix/identity/v2/account/register", "", oid, &reg); err != nil {
		return "", fmt.Errorf("registering at the upstream: %w", err)
	}
	token = reg.Token
	if token == "" {
		token = reg.AccessToken
	}
	if token == "" {
		return "", fmt.Errorf("%w: /account/register answered no token", errRefused)
	}
	if err := srv.terms(ctx, token); err != nil {
		return "", err
	}
	srv.mu.Lock()
	srv.token, srv.registered = token, srv.svc.opts.Now().UTC()
	srv.mu.Unlock()
	srv.svc.log.Info("registered at upstream identity server", "upstream", srv.cfg.BaseURL, "as", srv.cfg.UserID)
	return token, nil
}

// terms accepts every policy the upstream publishes, when the operator
// allowed it; otherwise an upstream with policies is skipped.
func (srv *server) terms(ctx context.Context, token string) error {
	var t struct {
		Policies map[string]map[string]json.RawMessage `json:"policies"`
	}
	if err := srv.call(ctx, "GET", srv.base+"/_matrix/identity/v2/terms", "", nil, &t); err != nil {
		return fmt.Errorf("reading the upstream's terms: %w", err)
	}
	var urls []string
	for _, p := range t.Policies {
		for lang, raw := range p {
			if lang == "version" {
				continue
			}
			var l struct {
				URL string `json:"url"`
			}
			if json.Unmarshal(raw, &l) == nil && l.URL != "" {
				urls = append(urls, l.URL)
			}
		}
	}
	if len(urls) == 0 {
		return nil
	}
	if !srv.cfg.AcceptTerms {
		srv.mu.Lock()
		srv.termsUntil = srv.svc.opts.Now().Add(termsRecheck)
		srv.mu.Unlock()
		srv.svc.log.Warn("upstream identity server skipped: it has terms of service and accept_terms is not set for it (M_TERMS_NOT_SIGNED)",
			"upstream", srv.cfg.BaseURL, "policies", len(t.Policies))
		return errTermsNotSigned
	}
	if err := srv.call(ctx, "POST", srv.base+"/_matrix/identity/v2/terms", token, map[string]any{"user_accepts": urls}, nil); err != nil {
		return fmt.Errorf("accepting the upstream's terms: %w", err)
	}
	srv.svc.log.Info("accepted the upstream's terms of service (accept_terms is set)", "upstream", srv.cfg.BaseURL, "documents", len(urls))
	return nil
}

// hashDetails returns the algorithm to use and the upstream's pepper.
func (srv *server) hashDetails(ctx context.Context, token string) (string, string, error) {
	now := srv.svc.opts.Now()
	srv.mu.Lock()
	alg, pepper, at := srv.alg, srv.pepper, srv.hashAt
	srv.mu.Unlock()
	if !at.IsZero() && now.Sub(at) < hashTTL {
		return alg, pepper, nil
	}
	var hd struct {
		Algorithms []string `json:"algorithms"`
		Pepper     string   `json:"lookup_pepper"`
	}
	if err := srv.call(ctx, "GET", srv.base+"/_matrix/identity/v2/hash_details", token, nil, &hd); err != nil {
		return "", "", err
	}
	alg = ""
	for _, a := range hd.Algorithms {
		if a == "sha256" {
			alg = a
			break
		}
		if a == "none" && srv.cfg.AllowPlaintext {
			alg = a
		}
	}
	if alg == "" {
		return "", "", errNoHash
	}
	srv.mu.Lock()
	srv.alg, srv.pepper, srv.hashAt = alg, hd.Pepper, now
	srv.mu.Unlock()
	return alg, hd.Pepper, nil
}

// verify fetches the upstream's signed association for address and checks
// it: a signature by one of the upstream's published keys, the same address
// and mxid the hashed lookup gave, and valid now.
func (srv *server) verify(ctx context.Context, address, mxid string) (string, time.Time, error) {
	var raw json.RawMessage
	if err := srv.call(ctx, "GET", srv.base+"/_matrix/identity/api/v1/lookup?"+url.Values{"medium": {"email"}, "address": {address}}.Encode(), "", nil, &raw); err != nil {
		return "", time.Time{}, fmt.Errorf("fetching the signed association: %w", err)
	}
	var a struct {
		Address    string                       `json:"address"`
		Medium     string                       `json:"medium"`
		MXID       string                       `json:"mxid"`
		NotBefore  int64                        `json:"not_before"`
		NotAfter   int64                        `json:"not_after"`
		TS         int64                        `json:"ts"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return "", time.Time{}, fmt.Errorf("%w: malformed association", errBadSignature)
	}
	norm, err := identity.NormalizeEmail(a.Address)
	if a.Medium != "email" || err != nil || norm != address || a.MXID != mxid {
		return "", time.Time{}, fmt.Errorf("%w: the association is for another address or user than the hashed lookup said", errBadSignature)
	}
	now := srv.svc.opts.Now()
	nb, na, ts := time.UnixMilli(a.NotBefore), time.UnixMilli(a.NotAfter), time.UnixMilli(a.TS)
	if a.NotAfter == 0 || now.Before(nb) || !now.Before(na) || ts.After(now.Add(clockSkew)) {
		return "", time.Time{}, fmt.Errorf("%w: the association is not valid now (not_before %s, not_after %s, ts %s)", errBadSignature,
			nb.UTC().Format(time.RFC3339), na.UTC().Format(time.RFC3339), ts.UTC().Format(time.RFC3339))
	}
	for name, sigs := range a.Signatures {
		for keyID := range sigs {
			if !strings.HasPrefix(keyID, "ed25519:") {
				continue
			}
			pub, err := srv.pubkey(ctx, keyID)
			if err != nil {
				continue
			}
			if keys.VerifyJSON(raw, name, keyID, pub) == nil {
				return mxid, na, nil
			}
		}
	}
	return "", time.Time{}, fmt.Errorf("%w: no signature verifies with the upstream's published keys", errBadSignature)
}

// pubkey returns the upstream's public key keyID (GET /v2/pubkey/{keyId}).
func (srv *server) pubkey(ctx context.Context, keyID string) (ed25519.PublicKey, error) {
	now := srv.svc.opts.Now()
	srv.mu.Lock()
	k, ok := srv.keys[keyID]
	srv.mu.Unlock()
	if ok && now.Sub(k.at) < keyTTL {
		return k.key, nil
	}
	var out struct {
		PublicKey string `json:"public_key"`
	}
	if err := srv.call(ctx, "GET", srv.base+"/_matrix/identity/v2/pubkey/"+url.PathEscape(keyID), "", nil, &out); err != nil {
		return nil, err
	}
	b, err := keys.DecodeBase64(out.PublicKey)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key %s is not an ed25519 key", errBadSignature, keyID)
	}
	srv.mu.Lock()
	if len(srv.keys) > 64 {
		clear(srv.keys)
	}
	srv.keys[keyID] = pubKey{key: b, at: now}
	srv.mu.Unlock()
	return b, nil
}

// apiError is a non-2xx answer with its Matrix errcode.
type apiError struct {
	status int
	code   string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: answered %d %s", errRefused, e.status, e.code)
}

func (e *apiError) Unwrap() error {
	if e.code == "M_TERMS_NOT_SIGNED" {
		return errTermsNotSigned
	}
	return errRefused
}

// call sends a request with an optional Bearer token and JSON body and
// decodes a 2xx JSON answer into out (nil: ignored). Errors never carry the
// URL's query (it may hold the address) nor the token.
func (srv *server) call(ctx context.Context, method, u, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", srv.svc.opts.UserAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	path := req.URL.Path
	resp, err := srv.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %s %s", errTimeout, method, path)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%w: %s %s: %v", errUnreachable, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, responseLimit+1))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %s %s", errTimeout, method, path)
		}
		return fmt.Errorf("%w: %s %s: %v", errUnreachable, method, path, err)
	}
	if len(data) > responseLimit {
		return fmt.Errorf("%w: %s %s: answer larger than %d bytes", errRefused, method, path, responseLimit)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Code string `json:"errcode"`
		}
		_ = json.Unmarshal(data, &e)
		return fmt.Errorf("%s %s: %w", method, path, &apiError{status: resp.StatusCode, code: e.Code})
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: %s %s: malformed JSON answer", errRefused, method, path)
	}
	return nil
}
