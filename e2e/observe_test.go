package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"

	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

// healthcheck runs `herald healthcheck args...` against the running binary
// and returns its exit code and output.
func (h *herald) healthcheck(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(h.bin, append([]string{"-config", h.config, "healthcheck"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatalf("herald healthcheck: %v", err)
	}
	return 0, out.String()
}

// requestLogLine waits for the request log line of a request to route that
// contains want (the line is written after the answer is sent).
func requestLogLine(t *testing.T, h *herald, route, want string) string {
	t.Helper()
	var last string
	waitFor(t, "a request log line for "+route+" with "+want, func() bool {
		for _, l := range strings.Split(h.out.String(), "\n") {
			if strings.Contains(l, "msg=request") && strings.Contains(l, " route="+route+" ") && strings.Contains(l, want) {
				last = l
				return true
			}
		}
		return false
	})
	return last
}

// TestBinaryObservability runs the built binary with metrics.listen and
// checks, through it: the client address in the request log with and
// without trusted_proxies; /metrics scraped and parsed with the Prometheus
// text parser after invites, mail and lookups, with no address, token or ID
// in any label; every query of the Grafana dashboard naming a metric of
// that scrape; and `herald healthcheck` on the ready server.
func TestBinaryObservability(t *testing.T) {
	metricsPort := freePort(t)
	h, smtp, inviterHS, _ := newBinary(t, "", fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d\n", metricsPort))
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	h.start(t)

	// 1. No trusted_proxies: X-Forwarded-For is not believed.
	xff := func() {
		req, _ := http.NewRequest("GET", h.url+"/_matrix/identity/v2", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	xff()
	requestLogLine(t, h, "/_matrix/identity/v2", " client=127.0.0.1")
	// ... and with the peer trusted it is.
	h.stop(t)
	f, err := os.OpenFile(h.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "trusted_proxies: [127.0.0.1]")
	f.Close()
	h.start(t)
	xff()
	requestLogLine(t, h, "/_matrix/identity/v2", " client=203.0.113.9")

	// 2. Work to count: an invite stored and mailed, a duplicate, a refusal,
	// a lookup, an unknown path.
	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": inviterHS.AddUser(alice), "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if json.Unmarshal(body, &reg); status != 200 || reg.Token == "" {
		t.Fatalf("register: %d %s", status, body)
	}
	invite := map[string]any{"medium": "email", "address": "bob@example.org", "room_id": "!garden:hs.test", "sender": alice}
	for i := 0; i < 2; i++ {
		if status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", invite, reg.Token); status != 200 {
			t.Fatalf("store-invite: %d %s", status, body)
		}
	}
	invite["room_id"] = "garden"
	status, body = h.do(t, "POST", "/_matrix/identity/v2/store-invite", invite, reg.Token)
	expectErr(t, status, body, 400, "M_INVALID_PARAM")
	if l := requestLogLine(t, h, "/_matrix/identity/v2/store-invite", " status=400 "); !strings.Contains(l, " errcode=M_INVALID_PARAM") {
		t.Errorf("request log of a refused store-invite: %s", l)
	}
	waitMail(t, smtp, "bob@example.org", "", 0)
	_, body = h.do(t, "GET", "/_matrix/identity/v2/hash_details", nil, reg.Token)
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	_ = json.Unmarshal(body, &hd)
	if status, body := h.do(t, "POST", "/_matrix/identity/v2/lookup", map[string]any{
		"addresses": []string{"bob@example.org email"}, "algorithm": "none", "pepper": hd.Pepper}, reg.Token); status != 200 {
		t.Fatalf("lookup: %d %s", status, body)
	}
	status, body = h.do(t, "GET", "/_matrix/identity/v2/3pid/bob@example.org/"+reg.Token, nil, "")
	expectErr(t, status, body, 404, "M_UNRECOGNIZED")
	// /metrics is on metrics.listen only.
	status, body = h.do(t, "GET", "/metrics", nil, "")
	expectErr(t, status, body, 404, "M_UNRECOGNIZED")

	// 3. The scrape.
	var s testenv.Scrape
	waitFor(t, "the invite mail to be counted", func() bool {
		s = testenv.GetMetrics(t, http.DefaultClient, metricsURL)
		v, _ := s.Value("herald_mail_sends_total", "result", "sent", "reply_class", "2xx")
		return v == 1
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"herald_store_invite_total", []string{"outcome", "stored"}, 1},
		{"herald_store_invite_total", []string{"outcome", "deduplicated"}, 1},
		{"herald_store_invite_total", []string{"outcome", "refused", "reason", "invalid"}, 1},
		{"herald_http_requests_total", []string{"route", "/_matrix/identity/v2/store-invite", "method", "POST", "status", "200"}, 2},
		{"herald_http_requests_total", []string{"route", "unmatched", "method", "GET", "status", "404"}, 2},
		{"herald_lookup_addresses_total", []string{"api", "v2"}, 1},
		{"herald_lookup_matches_total", []string{"api", "v2"}, 0},
		{"herald_invites_pending", nil, 1},
		{"herald_bindings", nil, 0},
		{"herald_onbind_queue_depth", nil, 0},
		{"herald_worker_up", []string{"worker", "mail"}, 1},
		{"herald_stats_up", nil, 1},
	} {
		v, ok := s.Value(c.name, c.labels...)
		if !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	// Each backend's own database metrics: bbolt's commit timings, or
	// the PostgreSQL pool's.
	dbMetric := "herald_db_write_seconds_total"
	if testenv.OnPostgres() {
		dbMetric = "herald_db_pool_acquires_total"
	}
	for _, name := range []string{"herald_db_size_bytes", dbMetric, "go_goroutines", "process_resident_memory_bytes"} {
		if v, _ := s.Value(name); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	for _, lv := range s.LabelValues() {
		for _, bad := range []string{"@", "!", "example.org", "203.0.113", "127.0.0.1", reg.Token} {
			if strings.Contains(lv, bad) {
				t.Errorf("label %s contains %q", lv, bad)
			}
		}
	}
	checkDashboard(t, s)

	if code, out := h.healthcheck(t); code != 0 {
		t.Fatalf("healthcheck on a ready server: exit %d: %s", code, out)
	}
}

// TestBinaryReadinessFollowsTheDatabaseFile: /_herald/health,
// /_herald/ready and `herald healthcheck` while the database file is moved
// away and replaced under the running server. bbolt: the file is bbolt's
// (on PostgreSQL, TestHealthAndReadiness covers an unreachable database).
func TestBinaryReadinessFollowsTheDatabaseFile(t *testing.T) {
	metricsPort := freePort(t)
	h, _, _, _ := newBoltBinary(t, "", fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d\n", metricsPort))
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	h.start(t)

	if code, out := h.healthcheck(t); code != 0 {
		t.Fatalf("healthcheck on a ready server: exit %d: %s", code, out)
	}
	expectReady := func(want int, reason string) {
		t.Helper()
		status, body := h.do(t, "GET", "/_herald/ready", nil, "")
		if status != want || !strings.Contains(string(body), reason) {
			t.Fatalf("ready: %d %s, want %d with %q", status, body, want, reason)
		}
		if status, body := h.do(t, "GET", "/_herald/health", nil, ""); status != 200 {
			t.Fatalf("health: %d %s", status, body)
		}
	}
	db := filepath.Join(filepath.Dir(h.config), "data", store.FileName)
	if err := os.Rename(db, db+".moved"); err != nil {
		t.Fatal(err)
	}
	expectReady(503, "is missing from data_dir")
	code, out := h.healthcheck(t)
	if code != 1 || !strings.Contains(out, "503") || !strings.Contains(out, "is missing from data_dir") {
		t.Errorf("healthcheck with the database moved away: exit %d: %s", code, out)
	}
	if code, out := h.healthcheck(t, "--live"); code != 0 {
		t.Errorf("healthcheck --live with the database moved away: exit %d: %s", code, out)
	}
	if v, _ := testenv.GetMetrics(t, http.DefaultClient, metricsURL).Value("herald_worker_up", "worker", "mail"); v != 1 {
		t.Errorf("metrics while not ready: worker_up %v", v)
	}
	if err := os.Rename(db+".moved", db); err != nil {
		t.Fatal(err)
	}
	expectReady(200, `"ready"`)
	// A copy put in its place is not the file Herald writes to.
	raw, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db+".copy", raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(db+".copy", db); err != nil {
		t.Fatal(err)
	}
	expectReady(503, "was replaced while Herald runs")
	if code, _ := h.healthcheck(t); code != 1 {
		t.Errorf("healthcheck with the database replaced: exit %d", code)
	}
	if logs := h.out.String(); !strings.Contains(logs, `msg="not ready"`) || !strings.Contains(logs, "msg=ready") {
		t.Errorf("readiness changes not logged")
	}
}

// metricName finds the metric names in a PromQL expression: identifiers
// followed by a selector or a range, not functions, keywords or labels.
var metricName = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)

// boltOnlyMetrics are the metrics of the bbolt file (internal/server/metrics.go),
// which a server on PostgreSQL does not export.
var boltOnlyMetrics = map[string]bool{
	"herald_db_write_seconds_total": true, "herald_db_spill_seconds_total": true, "herald_db_rebalance_seconds_total": true,
	"herald_db_page_writes_total": true, "herald_db_read_transactions_total": true, "herald_db_open_read_transactions": true,
	"herald_db_free_pages": true,
}

// checkDashboard checks that every query of deploy/grafana/herald.json
// names only metrics that the scrape holds (a histogram's _bucket, _sum and
// _count under its family's name).
func checkDashboard(t *testing.T, s testenv.Scrape) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "herald.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("deploy/grafana/herald.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			names := metricName.FindAllStringSubmatch(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("dashboard panel %q: no metric in %q", p.Title, tg.Expr)
			}
			for _, m := range names {
				name := m[1]
				if s[name] != nil {
					continue
				}
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if f := s[base]; f != nil && f.GetType().String() == "HISTOGRAM" {
					continue
				}
				if testenv.OnPostgres() && boltOnlyMetrics[name] {
					continue // the dashboard's bbolt panels stay empty on PostgreSQL
				}
				t.Errorf("dashboard panel %q queries %s, which Herald does not export", p.Title, name)
			}
		}
	}
	if queries < 20 {
		t.Errorf("dashboard has %d queries", queries)
	}
}
