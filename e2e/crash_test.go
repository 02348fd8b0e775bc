package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// kill ends herald with SIGKILL: no graceful shutdown, no deferred
// commit, no worker stopping at a clean point.
func (h *herald) kill(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill herald: %v", err)
	}
	_ = h.cmd.Wait() // "signal: killed"
	h.cmd = nil
}

const crashAdminToken = "crash-test-admin-token-0123456789"

// admin GETs an /admin/api path and decodes the answer into v.
func (h *herald) admin(t *testing.T, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest("GET", h.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+crashAdminToken)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, raw)
	}
}

// TestCrashLosesNoAcknowledgedWork kills the built binary with SIGKILL
// (1) while concurrent store-invites are being answered and their mails are
// being deferred by the SMTP server, and (2) while an onbind delivery is
// being retried against a homeserver that is down; after each restart on the
// same data_dir, every acknowledged invite is still there with its token,
// every invite stored (acknowledged or not) gets its email exactly once, and
// the onbind delivery arrives exactly once.
func TestCrashLosesNoAcknowledgedWork(t *testing.T) {
	// Short SMTP and onbind backoffs so deferred work is retried within the
	// test; no rate limits (40 invites from one sender at once).
	h, smtp, inviterHS, sim := newBinary(t, "  max_backoff: 50ms\n", fmt.Sprintf(`invites:
  rate_limits:
    sender: {per_hour: 0}
    room: {per_hour: 0}
    address: {per_hour: 0}
    homeserver: {per_hour: 0}
admin:
  api_tokens: [%q]
`, crashAdminToken))
	t.Cleanup(func() {
		if h.cmd != nil {
			h.kill(t)
		}
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	h.start(t)

	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": inviterHS.AddUser(alice), "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil || reg.Token == "" {
		t.Fatalf("register: %d %s", status, body)
	}
	atok := reg.Token

	// 1. The SMTP server defers every mail (451 at DATA). 20 store-invites
	// run at once and are answered; while their mails are being retried, 20
	// more run 8 at a time and Herald is killed when 5 of them are answered.
	smtp.Fail(smtptest.AtData, 451, -1)
	const n = 40
	room := func(i int) string { return fmt.Sprintf("!crash%d:hs.test", i) }
	address := func(i int) string { return fmt.Sprintf("crash%d@example.org", i) }
	storeInvite := func(i int) (int, []byte, error) {
		raw, _ := json.Marshal(map[string]any{
			"medium": "email", "address": address(i), "room_id": room(i), "sender": alice,
			"room_name": "Crash room", "sender_display_name": "Alice",
		})
		req, _ := http.NewRequest("POST", h.url+"/_matrix/identity/v2/store-invite", bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+atok)
		resp, err := h.client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	type result struct {
		i      int
		status int
		body   []byte
		err    error
	}
	acked := map[int]string{} // invite -> token, for every 200 received
	failed := 0
	// wave runs store-invites from..to-1, workers at a time; with killAfter
	// > 0, Herald is killed as soon as that many of them are answered, and
	// no new request starts after the kill.
	wave := func(from, to, workers, killAfter int) {
		next := make(chan int, to-from)
		for i := from; i < to; i++ {
			next <- i
		}
		close(next)
		results := make(chan result, to-from)
		var mu sync.Mutex // guards killed
		killed := false
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					mu.Lock()
					stop := killed
					mu.Unlock()
					if stop {
						return
					}
					status, body, err := storeInvite(i)
					results <- result{i, status, body, err}
				}
			}()
		}
		go func() { wg.Wait(); close(results) }()
		answered := 0
		for r := range results {
			switch {
			case r.err != nil:
				failed++ // in flight at the kill: neither acknowledged nor refused
			case r.status == 200:
				var a struct{ Token string }
				if err := json.Unmarshal(r.body, &a); err != nil || a.Token == "" {
					t.Fatalf("store-invite %d: %s", r.i, r.body)
				}
				acked[r.i] = a.Token
				if answered++; answered == killAfter {
					mu.Lock()
					killed = true
					mu.Unlock()
					h.kill(t)
				}
			default:
				t.Fatalf("store-invite %d: %d %s", r.i, r.status, r.body)
			}
		}
	}
	wave(0, n/2, n/2, 0)
	if len(acked) != n/2 {
		t.Fatalf("%d of %d store-invites answered before any kill", len(acked), n/2)
	}
	// The worker is retrying the deferred mails (every 50 ms) when the
	// second wave starts: wait until it has tried each about twice.
	waitFor(t, "the queued mails to be deferred", func() bool { return smtp.Commands(smtptest.AtData) >= n })
	wave(n/2, n, 8, 5)
	deferred := smtp.Commands(smtptest.AtData)
	if len(smtp.Messages()) != 0 {
		t.Fatalf("the SMTP server accepted %d mails while failing", len(smtp.Messages()))
	}
	t.Logf("before the kill: %d store-invites acknowledged, %d cut off; %d mail attempts deferred (451)", len(acked), failed, deferred)

	// Restart on the same data_dir with the SMTP server healthy.
	smtp.Fail(smtptest.AtData, 0, 0)
	h.start(t)

	// Every acknowledged invite is stored: a repeat of it is the de-dup
	// path (same sender, room and address, still pending) and answers the
	// same token.
	answers := map[int][]byte{}
	for i, token := range acked {
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": address(i), "room_id": room(i), "sender": alice,
		}, atok)
		var a struct{ Token string }
		_ = json.Unmarshal(body, &a)
		if status != 200 || a.Token != token {
			t.Fatalf("acknowledged invite %d after the crash: %d %s, want token %q", i, status, body, token)
		}
		answers[i] = body
	}

	// Every invite that was stored, acknowledged or cut off, has its email
	// (invite and mail are one transaction), and none is sent twice: no mail
	// was accepted before the kill, so no success went unrecorded.
	var stored []int
	for i := range n {
		var list struct {
			Invites []json.RawMessage `json:"invites"`
		}
		h.admin(t, "/admin/api/invites?q="+url.QueryEscape(address(i)), &list)
		switch len(list.Invites) {
		case 0:
			if _, ok := acked[i]; ok {
				t.Fatalf("acknowledged invite %d is not in the store", i)
			}
		case 1:
			stored = append(stored, i)
		default:
			t.Fatalf("invite %d stored %d times", i, len(list.Invites))
		}
	}
	waitFor(t, "the outbox to drain", func() bool {
		var out struct {
			Items []json.RawMessage `json:"items"`
		}
		h.admin(t, "/admin/api/outbox?state=pending", &out)
		return len(out.Items) == 0
	})
	perAddress := map[string][]*mailer.Parsed{}
	for _, m := range smtp.Messages() {
		if len(m.To) != 1 {
			t.Fatalf("mail to %v", m.To)
		}
		p, err := mailer.Parse(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		perAddress[strings.ToLower(m.To[0])] = append(perAddress[strings.ToLower(m.To[0])], p)
	}
	if len(perAddress) != len(stored) {
		t.Errorf("%d invites stored, mails went to %d addresses", len(stored), len(perAddress))
	}
	duplicates := 0
	for _, i := range stored {
		mails := perAddress[address(i)]
		if len(mails) == 0 {
			t.Errorf("invite %d (acknowledged: %v) got no email", i, acked[i] != "")
			continue
		}
		duplicates += len(mails) - 1
		if tok := acked[i]; tok != "" && !strings.Contains(mails[0].Text, tok) && !strings.Contains(mails[0].Text, url.QueryEscape(tok)) {
			t.Errorf("invite %d's email does not carry its token", i)
		}
	}
	if duplicates != 0 {
		t.Errorf("%d duplicate emails", duplicates)
	}
	t.Logf("after the restart: %d invites stored (%d acknowledged), %d emails, %d duplicates", len(stored), len(acked), len(smtp.Messages()), duplicates)

	// 2. One of the surviving invites is bound while the invitee's
	// homeserver is down; Herald is killed while the onbind delivery is
	// being retried and restarted with the homeserver up.
	var inv int
	for inv = range acked {
		break
	}
	if _, err := sim.AddStoreInviteAnswer(room(inv), alice, h.url, answers[inv]); err != nil {
		t.Fatal(err)
	}
	erin := "@erin:" + simName
	status, body = h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": sim.AddUser(erin), "token_type": "Bearer", "matrix_server_name": simName, "expires_in": 3600,
	}, "")
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil || reg.Token == "" {
		t.Fatalf("register erin: %d %s", status, body)
	}
	etok := reg.Token
	sim.Down(true)
	status, body = h.do(t, "POST", reqTokenPath, map[string]any{"client_secret": "erinsecret", "email": address(inv), "send_attempt": 1}, etok)
	if status != 200 {
		t.Fatalf("requestToken: %d %s", status, body)
	}
	sid, _, token := tokenFromMail(t, waitMail(t, smtp, address(inv), "Confirm", 0))
	status, body = h.do(t, "POST", submitPath, map[string]any{"sid": sid, "client_secret": "erinsecret", "token": token}, etok)
	if status != 200 {
		t.Fatalf("submitToken: %d %s", status, body)
	}
	status, body = h.do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": sid, "client_secret": "erinsecret", "mxid": erin}, etok)
	if status != 200 {
		t.Fatalf("bind: %d %s", status, body)
	}
	waitFor(t, "failed onbind attempts", func() bool { return len(sim.Calls()) >= 3 })
	h.kill(t)
	for _, c := range sim.Calls() {
		if c.Status != 0 {
			t.Fatalf("the homeserver answered while down: %+v", calls(sim))
		}
	}
	sim.Down(false)
	h.start(t)

	// The delivery is recorded delivered (a final state: nothing retries
	// it), and the homeserver accepted the invite once.
	type delivery struct {
		MXID     string `json:"mxid"`
		Attempts []struct {
			OK bool `json:"ok"`
		} `json:"attempts"`
	}
	var done delivery
	waitFor(t, "the onbind delivery to be recorded delivered", func() bool {
		var list struct {
			Items []delivery `json:"items"`
		}
		h.admin(t, "/admin/api/deliveries?state=delivered", &list)
		for _, d := range list.Items {
			if d.MXID == erin {
				done = d
				return true
			}
		}
		return false
	})
	h.stop(t) // graceful: any delivery still in flight finishes first
	oks := 0
	for _, a := range done.Attempts {
		if a.OK {
			oks++
		}
	}
	accepted := 0
	for _, a := range sim.Accepted() {
		if a.MXID == erin {
			accepted++
			if a.Token != acked[inv] || a.RoomID != room(inv) {
				t.Errorf("accepted %+v, want token of invite %d", a, inv)
			}
		}
	}
	if oks != 1 || accepted != 1 || len(done.Attempts) < 3 {
		t.Fatalf("delivery attempts %+v (want >= 2 failed then 1 ok), homeserver accepted %d; calls %v", done.Attempts, accepted, calls(sim))
	}
	if out := h.out.String(); strings.Contains(out, "@example.org") {
		t.Fatalf("an email address was logged in clear")
	}
}
