package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// floodOrigins is how many unbinds with fresh origins TestBinarySignedUnbind sends.
const floodOrigins = 20000

// rssKiB reads the resident set size of process pid from /proc.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// TestBinarySignedUnbind runs the built binary: bob binds his address, his
// homeserver unbinds it exactly as Synapse signs the request (its key served
// at /_matrix/key/v2/server), and a lookup finds nothing. Then 20,000 unbinds
// naming fresh origins that are not the mxid's server (issue: each made
// Herald fetch keys from that origin and cache them without bound) cause no
// key fetch at all, and the process's resident memory stays within 20 MB of
// where it was.
func TestBinarySignedUnbind(t *testing.T) {
	// Every flood origin is routed to this server, so that any key fetch
	// Herald makes for one is counted.
	var fetches atomic.Int64
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		http.Error(w, "{}", http.StatusNotFound)
	}))
	defer trap.Close()
	var servers strings.Builder
	for i := range floodOrigins {
		fmt.Fprintf(&servers, "    evil%d.test: %s\n", i, trap.URL)
	}
	h, smtp, _, sim := newBinary(t, "", "")
	// newBinary's config lists federation.servers last in that section:
	// append the flood origins there.
	cfg, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	anchor := "    " + simName + ": " + sim.URL + "\n"
	if !bytes.Contains(cfg, []byte(anchor)) {
		t.Fatalf("config layout changed:\n%s", cfg)
	}
	cfg = bytes.Replace(cfg, []byte(anchor), []byte(anchor+servers.String()), 1)
	if err := os.WriteFile(h.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			out := h.out.String()
			if len(out) > 20000 {
				out = out[len(out)-20000:]
			}
			t.Logf("herald output (end):\n%s", out)
		}
	})
	h.start(t)

	bob := "@bob:" + simName
	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": sim.AddUser(bob), "token_type": "Bearer", "matrix_server_name": simName, "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil || reg.Token == "" {
		t.Fatalf("register: %d %s", status, body)
	}
	tok := reg.Token
	status, body = h.do(t, "POST", reqTokenPath, map[string]any{"client_secret": "bobsecret", "email": "bob@example.org", "send_attempt": 1}, tok)
	if status != 200 {
		t.Fatalf("requestToken: %d %s", status, body)
	}
	sid, _, token := tokenFromMail(t, waitMail(t, smtp, "bob@example.org", "Confirm", 0))
	if status, body = h.do(t, "POST", submitPath, map[string]any{"sid": sid, "client_secret": "bobsecret", "token": token}, tok); status != 200 {
		t.Fatalf("submitToken: %d %s", status, body)
	}
	if status, body = h.do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": sid, "client_secret": "bobsecret", "mxid": bob}, tok); status != 200 {
		t.Fatalf("bind: %d %s", status, body)
	}
	lookup := func() string {
		t.Helper()
		status, body := h.do(t, "GET", "/_matrix/identity/v2/hash_details", nil, tok)
		var hd struct {
			Pepper string `json:"lookup_pepper"`
		}
		if err := json.Unmarshal(body, &hd); status != 200 || err != nil {
			t.Fatalf("hash_details: %d %s", status, body)
		}
		status, body = h.do(t, "POST", "/_matrix/identity/v2/lookup", map[string]any{
			"addresses": []string{"bob@example.org email"}, "algorithm": "none", "pepper": hd.Pepper}, tok)
		var r struct {
			Mappings map[string]string `json:"mappings"`
		}
		if err := json.Unmarshal(body, &r); status != 200 || err != nil {
			t.Fatalf("lookup: %d %s", status, body)
		}
		return r.Mappings["bob@example.org email"]
	}
	if m := lookup(); m != bob {
		t.Fatalf("lookup after bind: %q", m)
	}

	unbind := func(sign func(*http.Request, []byte)) (int, []byte) {
		t.Helper()
		raw, _ := json.Marshal(map[string]any{"mxid": bob, "threepid": map[string]string{"medium": "email", "address": "bob@example.org"}})
		req, _ := http.NewRequest("POST", h.url+"/_matrix/identity/v2/3pid/unbind", bytes.NewReader(raw))
		req.Header.Set("Content-Type", "application/json")
		sign(req, raw)
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	// The flood first, while bob is still bound: fresh origins, none of them
	// bob's server, through a few keep-alive connections.
	u, _ := url.Parse(h.url)
	flood := func(from, to int) {
		var wg sync.WaitGroup
		var next atomic.Int64
		next.Store(int64(from))
		var refusedOther atomic.Int64
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= to {
						return
					}
					status, body := unbind(func(r *http.Request, _ []byte) {
						r.Header.Set("Authorization", fmt.Sprintf(`X-Matrix origin="evil%d.test",key="ed25519:a",sig="c2lnbmF0dXJl",destination="%s"`, i, u.Host))
					})
					if status != 403 || !bytes.Contains(body, []byte("not signed by the homeserver of mxid")) {
						refusedOther.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if n := refusedOther.Load(); n != 0 {
			t.Fatalf("%d flood requests were not refused for their origin", n)
		}
	}
	start := rssKiB(t, h.cmd.Process.Pid)
	flood(0, 1000) // warm-up: connections, buffers, the server's steady state
	before := rssKiB(t, h.cmd.Process.Pid)
	flood(1000, floodOrigins)
	after := rssKiB(t, h.cmd.Process.Pid)
	t.Logf("RSS %d kB at the start, %d kB after 1,000 unbinds with fresh origins, %d kB after %d (%+d kB from the start)",
		start, before, after, floodOrigins, after-start)
	if n := fetches.Load(); n != 0 {
		t.Fatalf("the flood made Herald fetch keys %d times", n)
	}
	if after-start > 20<<10 || after-before > 20<<10 {
		t.Fatalf("RSS grew by %d kB from the start, %d kB after the warm-up", after-start, after-before)
	}
	if sim.KeyFetches() != 0 {
		t.Fatalf("bob's homeserver keys were fetched before any request from it")
	}
	if m := lookup(); m != bob {
		t.Fatalf("the flood removed the binding: %q", m)
	}

	// Bob's homeserver unbinds exactly as Synapse does.
	status, body = unbind(func(r *http.Request, raw []byte) { sim.SignRequestSynapse(r, u.Host, raw) })
	if status != 200 {
		t.Fatalf("unbind signed as Synapse signs it: %d %s", status, body)
	}
	if m := lookup(); m != "" {
		t.Fatalf("lookup after unbind: %q", m)
	}
	if sim.KeyFetches() != 1 {
		t.Fatalf("bob's homeserver keys fetched %d times, want 1", sim.KeyFetches())
	}
}
