package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// FakeHomeserver is a Matrix homeserver as far as Herald can tell: it serves
// GET /_matrix/federation/v1/openid/userinfo for tokens made by OpenIDToken,
// and whatever handlers tests add with Handle. It records every request.
type FakeHomeserver struct {
	// URL is the base URL (http://127.0.0.1:PORT).
	URL string

	srv *httptest.Server
	mux *http.ServeMux

	mu       sync.Mutex
	tokens   map[string]string // OpenID token -> user ID
	requests []Request
	down     bool
}

// Request is one request the fake homeserver received.
type Request struct {
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   []byte
}

// NewFakeHomeserver starts a fake homeserver, closed by t.Cleanup.
func NewFakeHomeserver(t testing.TB) *FakeHomeserver {
	h := &FakeHomeserver{mux: http.NewServeMux(), tokens: map[string]string{}}
	h.mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", h.userinfo)
	h.srv = httptest.NewServer(http.HandlerFunc(h.serve))
	h.URL = h.srv.URL
	t.Cleanup(h.srv.Close)
	return h
}

func (h *FakeHomeserver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.requests = append(h.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: body})
	down := h.down
	h.mu.Unlock()
	if down {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"errcode": "M_UNKNOWN", "error": "down for maintenance"})
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	h.mux.ServeHTTP(w, r)
}

// OpenIDToken makes a fresh OpenID access token that userinfo answers with
// {"sub": userID}.
func (h *FakeHomeserver) OpenIDToken(userID string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	tok := "oidc_" + hex.EncodeToString(b)
	h.mu.Lock()
	h.tokens[tok] = userID
	h.mu.Unlock()
	return tok
}

// SetDown makes every endpoint answer 503 (true) or work again (false).
func (h *FakeHomeserver) SetDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

// Requests returns a copy of every request received so far.
func (h *FakeHomeserver) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.requests...)
}

func (h *FakeHomeserver) userinfo(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	sub, ok := h.tokens[r.URL.Query().Get("access_token")]
	h.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "Access Token unknown or expired"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sub": sub})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
