// Package e2e tests the whole third-party invite: store-invite, email
// validation, bind, resolution and onbind delivery to a simulated homeserver,
// in-process (testenv) and through the built binary.
package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// simName is the simulated invitee homeserver's server name.
const simName = "sim.test"

type world struct {
	env  *testenv.Env
	smtp *smtptest.Server
	sim  *hssim.Sim
}

// start runs Herald (testenv) with a real SMTP test server and the
// homeserver simulator as sim.test, with short delivery backoffs.
func start(t *testing.T, mode hssim.Mode, mutate ...func(*config.Config)) *world {
	t.Helper()
	w := &world{smtp: smtptest.Start(t, smtptest.Options{}), sim: hssim.New(t, simName, mode)}
	base := func(c *config.Config) {
		c.SMTP.Host, c.SMTP.Port = w.smtp.Host, w.smtp.Port
		c.Federation.Servers[simName] = w.sim.URL
		c.Federation.Timeout = config.Duration(time.Second)
		c.Delivery.MinBackoff = config.Duration(10 * time.Millisecond)
		c.Delivery.MaxBackoff = config.Duration(50 * time.Millisecond)
		c.Invites.RateLimits.Address.PerHour = 0
		c.Invites.ResendInterval = 0 // the console's resend works at once
	}
	w.env = testenv.Start(t, append([]func(*config.Config){base}, mutate...)...)
	return w
}

// registerSim registers mxid (on sim.test) at Herald through the
// simulator's OpenID userinfo.
func (w *world) registerSim(t *testing.T, mxid string) string {
	t.Helper()
	oid := w.sim.AddUser(mxid)
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": oid, "token_type": "Bearer", "matrix_server_name": simName, "expires_in": 3600,
	}, "")
	if status != 200 {
		t.Fatalf("register %s: %d %s", mxid, status, body)
	}
	var r struct{ Token string }
	_ = json.Unmarshal(body, &r)
	return r.Token
}

var roomSeq atomic.Int64

// storeInvite invites address to a fresh room as sender (whose token is
// tok) and records the invite event at the simulator, as Synapse would.
func (w *world) storeInvite(t *testing.T, tok, sender, address string) (room string, answer []byte) {
	t.Helper()
	room = fmt.Sprintf("!room%d:hs.test", roomSeq.Add(1))
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": address, "room_id": room, "sender": sender,
		"room_alias": "", "room_avatar_url": "", "room_join_rules": "", "room_name": "Room " + room,
		"sender_display_name": "Alice", "sender_avatar_url": "",
	}, tok)
	if status != 200 {
		t.Fatalf("store-invite: %d %s", status, body)
	}
	if _, err := w.sim.AddStoreInviteAnswer(room, sender, w.env.URL, body); err != nil {
		t.Fatal(err)
	}
	return room, body
}

var linkToken = regexp.MustCompile(`submitToken\?[^\s"<>]*`)

// waitMail waits for a mail to address whose subject contains subject.
func waitMail(t *testing.T, s *smtptest.Server, address, subject string, skip int) *mailer.Parsed {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		seen := 0
		for _, m := range s.Messages() {
			if len(m.To) != 1 || !strings.EqualFold(m.To[0], address) {
				continue
			}
			p, err := mailer.Parse(m.Data)
			if err != nil {
				t.Fatalf("parse mail: %v", err)
			}
			if strings.Contains(p.Subject, subject) {
				if seen == skip {
					return p
				}
				seen++
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no mail %q to %s arrived", subject, address)
	return nil
}

// tokenFromMail reads sid, client_secret and token from the validation link.
func tokenFromMail(t *testing.T, p *mailer.Parsed) (sid, secret, token string) {
	t.Helper()
	m := linkToken.FindString(p.Text)
	if m == "" {
		t.Fatalf("no validation link in mail:\n%s", p.Text)
	}
	q, err := url.ParseQuery(strings.TrimPrefix(m, "submitToken?"))
	if err != nil {
		t.Fatal(err)
	}
	return q.Get("sid"), q.Get("client_secret"), q.Get("token")
}

// validate runs requestToken (attempt 1) and submitToken for address.
func (w *world) validate(t *testing.T, tok, address, secret string) string {
	t.Helper()
	before := 0
	for _, m := range w.smtp.Messages() {
		if p, err := mailer.Parse(m.Data); err == nil && len(m.To) == 1 && strings.EqualFold(m.To[0], address) && strings.Contains(p.Subject, "Confirm") {
			before++
		}
	}
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/validate/email/requestToken", map[string]any{
		"client_secret": secret, "email": address, "send_attempt": 1,
	}, tok)
	if status != 200 {
		t.Fatalf("requestToken: %d %s", status, body)
	}
	var r struct{ SID string }
	_ = json.Unmarshal(body, &r)
	sid, gotSecret, token := tokenFromMail(t, waitMail(t, w.smtp, address, "Confirm", before))
	if sid != r.SID || gotSecret != secret {
		t.Fatalf("link carries sid %q secret %q, want %q %q", sid, gotSecret, r.SID, secret)
	}
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/validate/email/submitToken", map[string]any{
		"sid": sid, "client_secret": secret, "token": token,
	}, tok)
	if status != 200 || !strings.Contains(string(body), `"success":true`) {
		t.Fatalf("submitToken: %d %s", status, body)
	}
	return sid
}

func (w *world) bind(t *testing.T, tok, sid, secret, mxid string) []byte {
	t.Helper()
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{
		"sid": sid, "client_secret": secret, "mxid": mxid,
	}, tok)
	if status != 200 {
		t.Fatalf("bind: %d %s", status, body)
	}
	return body
}

// waitAccepted waits until the simulator accepted at least n invites.
func waitAccepted(t *testing.T, sim *hssim.Sim, n int) []hssim.Accepted {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if a := sim.Accepted(); len(a) >= n {
			return a
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("simulator accepted %d invites, want %d; calls: %+v", len(sim.Accepted()), n, calls(sim))
	return nil
}

func calls(sim *hssim.Sim) []string {
	var out []string
	for _, c := range sim.Calls() {
		out = append(out, fmt.Sprintf("%s->%d", c.Method, c.Status))
	}
	return out
}

// waitFor polls cond until it holds (or fails the test after 10 s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func errcode(body []byte) string {
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Errcode
}

func expectErr(t *testing.T, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || errcode(body) != wantCode {
		t.Fatalf("got %d %s, want %d %s", status, body, wantStatus, wantCode)
	}
}

func lookupV2(t *testing.T, env *testenv.Env, tok, address string) string {
	t.Helper()
	status, body := env.Do(t, "GET", "/_matrix/identity/v2/hash_details", nil, tok)
	if status != 200 {
		t.Fatalf("hash_details: %d %s", status, body)
	}
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	_ = json.Unmarshal(body, &hd)
	status, body = env.Do(t, "POST", "/_matrix/identity/v2/lookup", map[string]any{
		"addresses": []string{address + " email"}, "algorithm": "none", "pepper": hd.Pepper,
	}, tok)
	if status != 200 {
		t.Fatalf("lookup: %d %s", status, body)
	}
	var r struct {
		Mappings map[string]string `json:"mappings"`
	}
	_ = json.Unmarshal(body, &r)
	return r.Mappings[address+" email"]
}

type configT = config.Config

func durationT(d time.Duration) config.Duration { return config.Duration(d) }
