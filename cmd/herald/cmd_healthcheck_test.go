package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/spectest"
)

func TestHealthcheckURL(t *testing.T) {
	t.Parallel()
	for listen, want := range map[string]string{
		"0.0.0.0:8090":   "http://127.0.0.1:8090",
		":8090":          "http://127.0.0.1:8090",
		"[::]:8090":      "http://[::1]:8090",
		"10.1.2.3:8090":  "http://10.1.2.3:8090",
		"localhost:8090": "http://localhost:8090",
	} {
		c := config.Default()
		c.Listen = listen
		if got := localURL(&c); got != want {
			t.Errorf("listen %s: %s, want %s", listen, got, want)
		}
	}
	c := config.Default()
	c.Listen, c.TLS.SelfSigned = "0.0.0.0:8443", true
	if got := localURL(&c); got != "https://127.0.0.1:8443" {
		t.Errorf("with TLS: %s", got)
	}
}

// healthcheck exits 0 on 200 and 1 (an error, not a usage error) with the
// reason otherwise, asking /_herald/ready, or /_herald/health with --live.
func TestHealthcheckCommand(t *testing.T) {
	t.Parallel()
	var notReady atomic.Bool
	srv := httptest.NewServer(spectest.Handler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/_herald/health":
			io.WriteString(w, `{"status":"ok"}`)
		case r.URL.Path == "/_herald/ready" && !notReady.Load():
			io.WriteString(w, `{"status":"ready"}`)
		case r.URL.Path == "/_herald/ready":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"errcode":"M_UNKNOWN","error":"Not ready: shutting down","reasons":["shutting down"]}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
		}
	})))
	defer srv.Close()
	env := []string{"HERALD_DATA_DIR=" + t.TempDir()}
	check := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"healthcheck", "--url", srv.URL}, args...), env, &out, io.Discard)
		return out.String(), err
	}
	if out, err := check(); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ready: %q %v", out, err)
	}
	notReady.Store(true)
	_, err := check()
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "503: Not ready: shutting down") {
		t.Fatalf("not ready: %v (exit %d)", err, exitCode(err))
	}
	if _, err := check("--live"); err != nil {
		t.Fatalf("--live while not ready: %v", err)
	}
	srv.Close()
	if _, err := check(); err == nil || exitCode(err) != 1 {
		t.Fatalf("nothing listening: %v", err)
	}
	if err := run(context.Background(), []string{"healthcheck", "extra"}, env, io.Discard, io.Discard); exitCode(err) != 2 {
		t.Fatalf("healthcheck extra: %v, want a usage error", err)
	}
}
