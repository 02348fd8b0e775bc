// Package testenv starts the whole Herald stack in-process for tests: a fresh
// data_dir, server.New behind an httptest server, and a fake homeserver that
// serves OpenID userinfo (and whatever else a test registers on it). Every
// response that passes through Do and DoRequest is validated against the
// Matrix specification with spectest.Validate.
//
// Use it from external test packages (package foo_test):
//
//	e := testenv.Start(t)
//	tok := e.Register(t, "@alice:hs.test")
//	status, body := e.Do(t, "GET", "/_matrix/identity/v2/account", nil, tok)
package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/store"
)

// ServerName is the server_name Herald runs as in tests.
const ServerName = "herald.test"

// HomeserverNames are the Matrix server names that federation.servers points
// at the fake homeserver. The fake homeserver answers for all of them (a user
// ID's domain says which one a token belongs to).
var HomeserverNames = []string{"hs.test", "hs2.test", "other.test"}

// Env is one running Herald.
type Env struct {
	// App is the running application; replaced by Restart.
	App *server.App
	// URL is the base URL of the server (http://127.0.0.1:PORT); it is also
	// public_base_url and survives Restart.
	URL string
	// Config is the configuration the App runs with. Mutating it has no effect
	// until Restart.
	Config *config.Config
	// HS is the fake homeserver.
	HS *FakeHomeserver
	// DataDir is the App's data_dir (a t.TempDir).
	DataDir string
	// Clock is the App's clock: real time plus an offset tests can advance.
	Clock *Clock
	// Client is an HTTP client for the server (no redirects followed).
	Client *http.Client

	logs    *SyncBuffer
	opts    server.Options // StartWith's, kept for Restart
	srv     *httptest.Server
	handler atomic.Pointer[http.Handler]
	closed  bool
}

// Start starts Herald with the test configuration, then applies mutate to it
// before the App is built. Everything is closed by t.Cleanup, which also runs
// a bbolt consistency check on the data file.
func Start(t testing.TB, mutate ...func(*config.Config)) *Env {
	t.Helper()
	return StartWith(t, server.Options{}, mutate...)
}

// StartWith is Start with server options (hooks such as
// StoreInviteTxHook); the clock, version and intervals are always the test
// environment's own.
func StartWith(t testing.TB, opts server.Options, mutate ...func(*config.Config)) *Env {
	t.Helper()
	e := &Env{HS: NewFakeHomeserver(t), DataDir: t.TempDir(), Clock: &Clock{}, logs: &SyncBuffer{}, opts: opts}
	e.setHandler(http.NotFoundHandler())
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*e.handler.Load()).ServeHTTP(w, r)
	}))
	e.URL = e.srv.URL
	e.Client = &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	cfg := config.Default()
	cfg.ServerName = ServerName
	cfg.PublicBaseURL = e.URL
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = e.DataDir
	cfg.Log.Level = "debug"
	// No smtp.host: mail goes to the dev mailbox in data_dir unless a test
	// points smtp at an in-process server (mailer/smtptest).
	cfg.SMTP.Security = "none"
	cfg.SMTP.From = "Herald <herald@herald.test>"
	cfg.SMTP.Timeout = config.Duration(2 * time.Second)
	cfg.Federation.Servers = map[string]string{}
	for _, n := range HomeserverNames {
		cfg.Federation.Servers[n] = e.HS.URL
	}
	cfg.Federation.AllowPrivateAddresses = true
	cfg.Federation.Timeout = config.Duration(2 * time.Second)
	if m := defaultStorage(t); m != nil {
		mutate = append([]func(*config.Config){m}, mutate...) // TEST_STORAGE=postgres (storage.go)
	}
	for _, m := range mutate {
		m(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("testenv: invalid test configuration: %v", err)
	}
	e.Config = &cfg

	t.Cleanup(func() {
		e.srv.Close()
		e.closeApp(t)
		e.checkDB(t)
		if t.Failed() {
			t.Logf("herald logs:\n%s", e.Logs())
		}
	})
	e.open(t)
	return e
}

func (e *Env) open(t testing.TB) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := e.opts
	opts.Now, opts.Version = e.Clock.Now, "test"
	// The stored-data gauges of /metrics are read on every scrape, so
	// tests see the database as it is.
	opts.Intervals = server.Intervals{Stats: time.Nanosecond}
	a, err := server.New(e.Config, log, opts)
	if err != nil {
		t.Fatalf("testenv: server.New: %v", err)
	}
	a.Start(context.Background())
	e.App = a
	e.closed = false
	e.setHandler(a.Handler())
}

func (e *Env) setHandler(h http.Handler) { e.handler.Store(&h) }

func (e *Env) closeApp(t testing.TB) {
	t.Helper()
	if e.closed || e.App == nil {
		return
	}
	e.closed = true
	e.setHandler(http.NotFoundHandler())
	if err := e.App.Close(); err != nil {
		t.Errorf("testenv: App.Close: %v", err)
	}
}

// Restart closes the App and opens a new one on the same data_dir (and the
// same URL), after applying mutate to the configuration. Use it for
// durability tests and for configuration changes (new terms, ...).
func (e *Env) Restart(t testing.TB, mutate ...func(*config.Config)) {
	t.Helper()
	e.closeApp(t)
	e.checkDB(t)
	for _, m := range mutate {
		m(e.Config)
	}
	if err := e.Config.Validate(); err != nil {
		t.Fatalf("testenv: invalid test configuration: %v", err)
	}
	e.open(t)
}

// checkDB runs bbolt's consistency check on the (closed) data file; on
// PostgreSQL there is none to run.
func (e *Env) checkDB(t testing.TB) {
	t.Helper()
	if e.Config.Storage.Backend == config.StoragePostgres {
		return
	}
	checkDB(t, e.DataDir)
}

// checkDB runs bbolt's consistency check on the (closed) data file.
func checkDB(t testing.TB, dataDir string) {
	t.Helper()
	path := filepath.Join(dataDir, store.FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("testenv: reopen %s for a consistency check: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("testenv: bbolt consistency check: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("testenv: bbolt consistency check: %v", err)
	}
}

// Logs returns everything the App logged so far (text format, debug level).
func (e *Env) Logs() string { return e.logs.String() }

// Do sends method path (which may carry a query) with body: nil for none,
// a string or []byte sent verbatim, anything else JSON-encoded. A non-empty
// token is sent as Authorization: Bearer. The response is validated against
// the spec; Do returns its status and body.
func (e *Env) Do(t testing.TB, method, path string, body any, token string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("testenv: encode body: %v", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp := e.DoRequest(t, req)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// DoRequest sends req (its URL may be relative to e.URL, e.g. "/_matrix/...")
// and validates the response against the spec. The returned body is fully
// buffered; closing it is optional.
func (e *Env) DoRequest(t testing.TB, req *http.Request) *http.Response {
	t.Helper()
	if req.URL.Host == "" {
		full, err := http.NewRequestWithContext(req.Context(), req.Method, e.URL+req.URL.RequestURI(), req.Body)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		full.Header = req.Header
		full.ContentLength = req.ContentLength
		req = full
	}
	resp, err := e.Client.Do(req)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v", req.Method, req.URL.Path, err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("testenv: read response to %s %s: %v", req.Method, req.URL.Path, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(raw))
	spectest.Validate(t, req.Method, req.URL.Path, resp.StatusCode, raw)
	return resp
}

// Register makes the fake homeserver vouch for a fresh OpenID token for
// userID (e.g. "@alice:hs.test"; its domain must be one of HomeserverNames or
// another name federation.servers points at e.HS), registers it at
// /account/register and returns Herald's access token.
func (e *Env) Register(t testing.TB, userID string) string {
	t.Helper()
	_, server, ok := strings.Cut(userID, ":")
	if !ok || !strings.HasPrefix(userID, "@") {
		t.Fatalf("testenv: Register(%q): not a user ID", userID)
	}
	openID := e.HS.OpenIDToken(userID)
	status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": openID, "token_type": "Bearer", "matrix_server_name": server, "expires_in": 3600,
	}, "")
	if status != http.StatusOK {
		t.Fatalf("testenv: Register(%q): %d %s", userID, status, body)
	}
	var resp struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || resp.Token == "" {
		t.Fatalf("testenv: Register(%q): no token in %s", userID, body)
	}
	return resp.Token
}

// AcceptTerms accepts every configured policy (all languages) for token.
func (e *Env) AcceptTerms(t testing.TB, token string) {
	t.Helper()
	var urls []string
	for _, p := range e.Config.Terms.Policies {
		for _, l := range p.Languages {
			urls = append(urls, l.URL)
		}
	}
	if urls == nil {
		urls = []string{}
	}
	status, body := e.Do(t, http.MethodPost, "/_matrix/identity/v2/terms", map[string]any{"user_accepts": urls}, token)
	if status != http.StatusOK {
		t.Fatalf("testenv: AcceptTerms: %d %s", status, body)
	}
}

// Clock is real time plus an offset that only moves forward.
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
}

// Now is time.Now plus the offset.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, for capturing a
// server's logs while it runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
