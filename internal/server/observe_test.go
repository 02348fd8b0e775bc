package server_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

// scrape serves the App's /metrics handler once and parses the answer.
func scrape(t *testing.T, a *server.App) testenv.Scrape {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Metrics().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	return testenv.ParseMetrics(t, rec.Body.Bytes())
}

func metricValue(t *testing.T, s testenv.Scrape, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.Value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	return v
}

func storeInvite(t *testing.T, e *testenv.Env, tok, room, address string) (int, []byte) {
	t.Helper()
	return e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": address, "room_id": room, "sender": "@alice:hs.test",
	}, tok)
}

// The metrics count what happened, by route template and outcome, and the
// stored-data gauges follow the database; no label carries a path, address,
// token, room or user ID.
func TestMetricsCountWhatHappened(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) { c.Invites.RateLimits.Address = config.RateLimit{PerHour: 1, Burst: 1} })
	tok := e.Register(t, "@alice:hs.test")

	if s, b := storeInvite(t, e, tok, "!garden:hs.test", "bob@example.org"); s != 200 {
		t.Fatalf("store-invite: %d %s", s, b)
	}
	if s, b := storeInvite(t, e, tok, "!garden:hs.test", "bob@example.org"); s != 200 {
		t.Fatalf("repeated store-invite: %d %s", s, b)
	}
	if s, _ := storeInvite(t, e, tok, "!porch:hs.test", "bob@example.org"); s != 429 {
		t.Fatalf("store-invite over the address limit: %d", s)
	}
	if s, _ := storeInvite(t, e, tok, "not-a-room", "carol@example.org"); s != 400 {
		t.Fatalf("store-invite with a bad room: %d", s)
	}
	e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/ed25519:nosuchkey", nil, "")
	e.Do(t, http.MethodGet, "/secret-path/bob@example.org", nil, "")
	req, _ := http.NewRequest("BREW", e.URL+"/_matrix/identity/versions", nil)
	e.DoRequest(t, req).Body.Close()

	// The invite mail goes to the dev mailbox: one send, 2xx.
	waitFor(t, "the invite mail to be recorded sent", func() bool {
		v, _ := scrape(t, e.App).Value("herald_mail_sends_total", "result", "sent", "reply_class", "2xx")
		return v == 1
	})
	s := scrape(t, e.App)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"herald_store_invite_total", []string{"outcome", "stored"}, 1},
		{"herald_store_invite_total", []string{"outcome", "deduplicated"}, 1},
		{"herald_store_invite_total", []string{"outcome", "refused", "reason", "rate_limited"}, 1},
		{"herald_store_invite_total", []string{"outcome", "refused", "reason", "invalid"}, 1},
		{"herald_store_invite_total", []string{"outcome", "refused", "reason", "policy"}, 0},
		{"herald_http_requests_total", []string{"route", "/_matrix/identity/v2/store-invite", "method", "POST", "status", "200"}, 2},
		{"herald_http_requests_total", []string{"route", "/_matrix/identity/v2/store-invite", "method", "POST", "status", "429"}, 1},
		{"herald_http_requests_total", []string{"route", "/_matrix/identity/v2/pubkey/:keyId", "method", "GET", "status", "404"}, 1},
		{"herald_http_requests_total", []string{"route", "unmatched", "method", "GET", "status", "404"}, 1},
		{"herald_http_requests_total", []string{"route", "/_matrix/identity/versions", "method", "OTHER", "status", "405"}, 1},
		{"herald_http_request_duration_seconds", []string{"route", "/_matrix/identity/v2/store-invite", "method", "POST"}, 4},
		{"herald_invites_pending", nil, 1},
		{"herald_mail_queue_depth", nil, 0},
		{"herald_mail_queue_oldest_age_seconds", nil, 0},
		{"herald_bindings", nil, 0},
		{"herald_stats_up", nil, 1},
		{"herald_worker_up", []string{"worker", "mail"}, 1},
		{"herald_worker_up", []string{"worker", "onbind"}, 1},
		{"herald_build_info", []string{"version", "test"}, 1},
	} {
		if got := metricValue(t, s, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Each backend's own database metrics: bbolt's commit timings, or the
	// PostgreSQL pool's.
	dbMetric := "herald_db_write_seconds_total"
	if e.App.DB().Backend() == store.BackendPostgres {
		dbMetric = "herald_db_pool_acquires_total"
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "herald_db_size_bytes", dbMetric} {
		if v := metricValue(t, s, name); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}

	// A binding resolves the invite and queues its onbind delivery, which
	// the fake homeserver refuses (404): one refused attempt.
	err := e.App.DB().Update(func(tx *store.Tx) error {
		now := time.Now()
		return e.App.Identity().PutBinding(tx, identity.Binding{Medium: "email", Address: "bob@example.org", MXID: "@bob:hs2.test",
			NotBefore: now, NotAfter: now.Add(time.Hour), TS: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the onbind attempt to be counted", func() bool {
		v, _ := scrape(t, e.App).Value("herald_onbind_attempts_total", "result", "refused")
		return v == 1
	})
	hd := struct {
		Pepper string `json:"lookup_pepper"`
	}{}
	_, body := e.Do(t, http.MethodGet, "/_matrix/identity/v2/hash_details", nil, tok)
	_ = json.Unmarshal(body, &hd)
	if st, b := e.Do(t, http.MethodPost, "/_matrix/identity/v2/lookup", map[string]any{
		"addresses": []string{"bob@example.org email", "nobody@example.org email"}, "algorithm": "none", "pepper": hd.Pepper,
	}, tok); st != 200 {
		t.Fatalf("lookup: %d %s", st, b)
	}
	s = scrape(t, e.App)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"herald_bindings", nil, 1},
		{"herald_invites_pending", nil, 0},
		{"herald_onbind_queue_depth", nil, 0},
		{"herald_lookup_addresses_total", []string{"api", "v2"}, 2},
		{"herald_lookup_matches_total", []string{"api", "v2"}, 1},
	} {
		if got := metricValue(t, s, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, lv := range s.LabelValues() {
		for _, bad := range []string{"@", "!", "example.org", "secret-path", "nosuchkey", "BREW", tok} {
			if strings.Contains(lv, bad) {
				t.Errorf("label %s contains %q", lv, bad)
			}
		}
	}
}

// The queue gauges count pending work and its age without reading history.
func TestMetricsQueueBacklog(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	tok := e.Register(t, "@alice:hs.test")
	// The homeserver is down: the onbind delivery waits in the queue.
	e.HS.SetDown(true)
	if s, b := storeInvite(t, e, tok, "!garden:hs.test", "bob@example.org"); s != 200 {
		t.Fatalf("store-invite: %d %s", s, b)
	}
	err := e.App.DB().Update(func(tx *store.Tx) error {
		now := time.Now()
		return e.App.Identity().PutBinding(tx, identity.Binding{Medium: "email", Address: "bob@example.org", MXID: "@bob:hs2.test",
			NotBefore: now, NotAfter: now.Add(time.Hour), TS: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a failed onbind attempt", func() bool {
		v, _ := scrape(t, e.App).Value("herald_onbind_attempts_total", "result", "retry")
		return v >= 1
	})
	e.Clock.Advance(90 * time.Second)
	s := scrape(t, e.App)
	if d := metricValue(t, s, "herald_onbind_queue_depth"); d != 1 {
		t.Errorf("onbind queue depth %v, want 1", d)
	}
	if age := metricValue(t, s, "herald_onbind_queue_oldest_age_seconds"); age < 90 || age > 150 {
		t.Errorf("onbind oldest age %v s, want about 90", age)
	}
}

// With no trusted_proxies the client address is the TCP peer whatever
// X-Forwarded-For says; with the peer listed, it is the right-most address
// the trusted proxies did not add. The request log shows it (and the errcode
// of errors), and compat.v1_store_invite_allow, a per-client check, uses
// the same address.
func TestClientAddress(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		trusted []string
		xff     string
		want    string
		allowed bool
	}{
		{"no trusted proxies", nil, "203.0.113.7", "127.0.0.1", false},
		{"untrusted peer", []string{"192.0.2.1"}, "203.0.113.7", "127.0.0.1", false},
		{"trusted peer", []string{"127.0.0.1"}, "203.0.113.7", "203.0.113.7", true},
		{"trusted range", []string{"127.0.0.0/8", "10.0.0.0/8"}, "203.0.113.7, 10.1.2.3", "203.0.113.7", true},
		{"spoofed hop before an untrusted one", []string{"127.0.0.1"}, "203.0.113.7, 198.51.100.9", "198.51.100.9", false},
		{"garbage in the header", []string{"127.0.0.1"}, "not-an-ip", "127.0.0.1", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := testenv.Start(t, func(cfg *config.Config) {
				cfg.TrustedProxies = c.trusted
				cfg.Compat.V1 = true
				cfg.Compat.V1StoreInviteAllow = []string{"203.0.113.7"}
			})
			req, _ := http.NewRequest(http.MethodPost, e.URL+"/_matrix/identity/api/v1/store-invite",
				strings.NewReader(`{"medium":"email","address":"bob@example.org","room_id":"!r:hs.test","sender":"@alice:hs.test"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Forwarded-For", c.xff)
			req.Header.Set("X-Real-IP", "203.0.113.7") // never believed
			resp := e.DoRequest(t, req)
			resp.Body.Close()
			if got := resp.StatusCode == http.StatusOK; got != c.allowed {
				t.Errorf("v1 store-invite allowed: %v (status %d), want %v", got, resp.StatusCode, c.allowed)
			}
			want := "route=/_matrix/identity/api/v1/store-invite status=200"
			if !c.allowed {
				want = "route=/_matrix/identity/api/v1/store-invite status=403"
			}
			line := logLine(t, e.Logs(), want)
			if !strings.Contains(line, " client="+c.want) {
				t.Errorf("request log %q: want client=%s", line, c.want)
			}
			if !c.allowed && !strings.Contains(line, " errcode=M_FORBIDDEN") {
				t.Errorf("request log %q: want errcode=M_FORBIDDEN", line)
			}
			if c.allowed && strings.Contains(line, "errcode=") {
				t.Errorf("request log %q has an errcode for a success", line)
			}
		})
	}
}

func logLine(t *testing.T, logs, contains string) string {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, contains) {
			return l
		}
	}
	t.Fatalf("no log line with %q:\n%s", contains, logs)
	return ""
}

// /_herald/health answers while the process serves; /_herald/ready answers
// 503 naming the reason when the database under the running server is
// closed, and when the server is shutting down.
func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t)
	get := func(path string) (int, map[string]any) {
		t.Helper()
		status, body := e.Do(t, http.MethodGet, path, nil, "")
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("GET %s: %d %s", path, status, body)
		}
		return status, m
	}
	if s, m := get("/_herald/health"); s != 200 || m["status"] != "ok" {
		t.Fatalf("health: %d %v", s, m)
	}
	if s, m := get("/_herald/ready"); s != 200 || m["status"] != "ready" {
		t.Fatalf("ready: %d %v", s, m)
	}
	// The database fails under the running server: each backend names
	// its own reason.
	reason := "database not usable"
	if e.App.DB().Backend() == store.BackendPostgres {
		reason = "PostgreSQL not reachable"
	}
	if err := e.App.DB().Close(); err != nil {
		t.Fatal(err)
	}
	s, m := get("/_herald/ready")
	if s != 503 || m["errcode"] != "M_UNKNOWN" || !strings.Contains(m["error"].(string), reason) {
		t.Fatalf("ready with the database closed: %d %v", s, m)
	}
	if reasons, _ := m["reasons"].([]any); len(reasons) != 1 {
		t.Errorf("reasons: %v", m["reasons"])
	}
	if logs := e.Logs(); !strings.Contains(logs, `msg="not ready" reason="`+reason) ||
		!strings.Contains(logs, "route=/_herald/ready status=503") || !strings.Contains(logs, "errcode=M_UNKNOWN") {
		t.Errorf("logs lack the readiness change:\n%s", logs)
	}
	if s, _ := get("/_herald/health"); s != 200 {
		t.Errorf("health with the database closed: %d, want 200 (the process serves)", s)
	}
	s2 := scrape(t, e.App)
	if v := metricValue(t, s2, "herald_stats_up"); v != 0 {
		t.Errorf("herald_stats_up with the database closed: %v", v)
	}
}

func TestReadinessDuringShutdown(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	a, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	srv := httptest.NewServer(spectest.Handler(t, a.Handler()))
	defer srv.Close()
	ready := func() (int, string) {
		resp, err := http.Get(srv.URL + "/_herald/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if s, b := ready(); s != 503 || !strings.Contains(b, "background workers not started") {
		t.Fatalf("ready before Start: %d %s", s, b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.Start(ctx)
	if s, b := ready(); s != 200 {
		t.Fatalf("ready after Start: %d %s", s, b)
	}
	cancel()
	if s, b := ready(); s != 503 || !strings.Contains(b, "shutting down") {
		t.Fatalf("ready after shutdown began: %d %s", s, b)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
