package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
)

// Issue 9 point 14: only the Matrix API gets CORS. A page of any origin
// must not read the console or its API with an operator's cookie or token,
// nor Herald's own pages.
func TestConsoleHasNoCORS(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) { c.Admin.APITokens = []config.Secret{adminToken} })
	for _, c := range []struct {
		method, path string
		auth         bool
	}{
		{http.MethodGet, "/admin/login", false},
		{http.MethodGet, "/admin", false},
		{http.MethodGet, "/admin/api/invites", false},
		{http.MethodGet, "/admin/api/invites", true},
		{http.MethodOptions, "/admin/api/invites", false},
		{http.MethodOptions, "/admin/login", false},
		{http.MethodGet, "/_herald/invites/decline", false},
		{http.MethodOptions, "/_herald/invites/decline", false},
	} {
		req, _ := http.NewRequest(c.method, c.path, nil)
		req.Header.Set("Origin", "https://evil.example")
		if c.method == http.MethodOptions {
			req.Header.Set("Access-Control-Request-Method", "POST")
			req.Header.Set("Access-Control-Request-Headers", "Authorization, Content-Type")
		}
		if c.auth {
			req.Header.Set("Authorization", "Bearer "+adminToken)
		}
		resp := doAny(t, e, req)
		for k := range resp.Header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("%s %s (token %v): %d with %s: %q", c.method, c.path, c.auth, resp.StatusCode, k, resp.Header.Get(k))
			}
		}
	}
	// The Matrix API keeps them (TestCORS checks them in full).
	resp := e.DoRequest(t, mustRequest(t, http.MethodGet, "/_matrix/identity/versions"))
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("the Matrix API lost CORS: %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

// doAny sends req through the spec validator, except for the console's JSON
// API, whose errors are {"error"} rather than Matrix errors (as adminCall).
func doAny(t *testing.T, e *testenv.Env, req *http.Request) *http.Response {
	t.Helper()
	if !strings.HasPrefix(req.URL.Path, "/admin/api/") {
		return e.DoRequest(t, req)
	}
	full, _ := http.NewRequest(req.Method, e.URL+req.URL.RequestURI(), nil)
	full.Header = req.Header
	resp, err := e.Client.Do(full)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func mustRequest(t *testing.T, method, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
