package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/config"
)

// A panic in a handler, with or without a request body, is answered 500
// M_UNKNOWN with the CORS headers, logged and counted (Close then reports
// an unclean shutdown), and the request log has its line; a panic with
// http.ErrAbortHandler goes on up to net/http. The route is added for the
// test only, so its answers are not in the spec: the body is checked here.
func TestHandlerPanic(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.ServerName = "herald.test"
	cfg.DataDir = t.TempDir()
	var logs bytes.Buffer
	a, err := New(&cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	e := a.Handler().(*echo.Echo)
	e.GET("/_matrix/identity/v2/panic-test", func(echo.Context) error { panic("boom") })
	e.POST("/_matrix/identity/v2/panic-test", func(echo.Context) error { panic("boom") })
	e.GET("/_matrix/identity/v2/abort-test", func(echo.Context) error { panic(http.ErrAbortHandler) })

	for i, req := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/_matrix/identity/v2/panic-test", nil),
		httptest.NewRequest(http.MethodPost, "/_matrix/identity/v2/panic-test", strings.NewReader(`{"a":1}`)),
	} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		var body struct{ Errcode, Error string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusInternalServerError || body.Errcode != "M_UNKNOWN" {
			t.Fatalf("%s: %d %s", req.Method, rec.Code, rec.Body)
		}
		if strings.Contains(rec.Body.String(), "boom") {
			t.Errorf("%s: the panic shows in the answer: %s", req.Method, rec.Body)
		}
		if rec.Header().Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s: no CORS headers on the 500", req.Method)
		}
		if n := a.handlerPanics.Load(); n != uint64(i+1) {
			t.Errorf("%s: %d panics counted, want %d", req.Method, n, i+1)
		}
	}
	for _, want := range []string{
		`msg="panic in handler" path=/_matrix/identity/v2/panic-test err=boom`,
		`level=WARN msg=request method=GET route=/_matrix/identity/v2/panic-test status=500`,
		`level=WARN msg=request method=POST route=/_matrix/identity/v2/panic-test status=500`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}

	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Errorf("ErrAbortHandler: recovered %v, want it to reach net/http", r)
			}
		}()
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/_matrix/identity/v2/abort-test", nil))
	}()
}
