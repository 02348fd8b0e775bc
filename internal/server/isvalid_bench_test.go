package server_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// The isvalid benchmarks run one GET through the App's whole HTTP stack
// (every middleware, the router, the handler, the access log and the
// metrics) in process, without a network: what each check costs the server
// itself, apart from the connection handling net/http adds. They log as a
// production server does by default (text, level info), into io.Discard.

// benchApp builds an App on a fresh data_dir (bbolt) and returns its handler.
func benchApp(b *testing.B) (*server.App, http.Handler) {
	b.Helper()
	cfg := config.Default()
	cfg.ServerName = "herald.test"
	cfg.DataDir = b.TempDir()
	a, err := server.New(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	return a, a.Handler()
}

// benchWriter is a ResponseWriter the loop reuses, so that the allocations
// reported are the stack's, not a recorder's.
type benchWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *benchWriter) Header() http.Header { return w.h }
func (w *benchWriter) WriteHeader(s int)   { w.status = s }
func (w *benchWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(p)
}

func (w *benchWriter) reset() {
	clear(w.h)
	w.status = 0
	w.body.Reset()
}

func benchIsValid(b *testing.B, h http.Handler, target string) {
	b.Helper()
	// One answer through the spec validator first, as every test response.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	u, _ := url.Parse(target)
	spectest.Validate(b, http.MethodGet, u.Path, rec.Code, rec.Body.Bytes())
	if rec.Code != http.StatusOK || rec.Body.String() != `{"valid":true}` {
		b.Fatalf("GET %s: %d %s", u.Path, rec.Code, rec.Body)
	}

	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.RemoteAddr = "127.0.0.1:40000"
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.reset()
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("GET %s: %d %s", u.Path, w.status, w.body.Bytes())
		}
	}
}

// BenchmarkHandlerPubkeyIsValid: GET /v2/pubkey/isvalid (the long-term key,
// in memory).
func BenchmarkHandlerPubkeyIsValid(b *testing.B) {
	a, h := benchApp(b)
	benchIsValid(b, h, "/_matrix/identity/v2/pubkey/isvalid?public_key="+url.QueryEscape(a.Ring().Current().PublicBase64()))
}

// BenchmarkHandlerEphemeralIsValid: GET /v2/pubkey/ephemeral/isvalid (one
// stored record read).
func BenchmarkHandlerEphemeralIsValid(b *testing.B) {
	a, h := benchApp(b)
	pub, _ := keys.NewEphemeralKey()
	pubB64 := keys.EncodeBase64(pub)
	if err := a.DB().Update(func(tx *store.Tx) error {
		return a.Ephemeral().Put(tx, pubB64, "bench", time.Now().Add(time.Hour))
	}); err != nil {
		b.Fatal(err)
	}
	benchIsValid(b, h, "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(pubB64))
}
