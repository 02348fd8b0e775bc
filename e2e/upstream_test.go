package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
)

// svcName is the homeserver of the service user Herald registers upstream with.
const svcName = "svc.test"

// upstreamWorld is two Heralds: "up", a real Herald with its own keys where
// the invitee bound the address, and the Herald under test, whose
// lookup.upstream names it; plus the homeserver simulator serving OpenID for
// the service user.
type upstreamWorld struct {
	up, here *world
	svc      *hssim.Sim
	svcToken string
}

const bobUp = "@bob:" + simName

// startUpstream starts the upstream Herald with addr bound to bobUp, and the
// Herald under test consulting upstreamURL(up) (nil: up itself).
func startUpstream(t *testing.T, mode hssim.Mode, addr string, upMutate func(*config.Config), upstreamURL func(up *world) string, mutate ...func(*config.Config)) *upstreamWorld {
	t.Helper()
	w := &upstreamWorld{svc: hssim.New(t, svcName, hssim.Synapse)}
	w.svcToken = w.svc.AddServiceUser("@herald:" + svcName)
	w.up = start(t, hssim.Synapse, func(c *config.Config) {
		c.ServerName = "upstream.test"
		c.Compat.V1 = true // the signed association (v1 lookup)
		c.Federation.Servers[svcName] = w.svc.URL
		if upMutate != nil {
			upMutate(c)
		}
	})
	if addr != "" {
		btok := w.up.registerSim(t, bobUp)
		if len(w.up.env.Config.Terms.Policies) > 0 {
			w.up.env.AcceptTerms(t, btok)
		}
		sid := w.up.validate(t, btok, addr, "secret1")
		w.up.bind(t, btok, sid, "secret1", bobUp)
	}
	base := w.up.env.URL
	if upstreamURL != nil {
		base = upstreamURL(w.up)
	}
	cfg := func(c *config.Config) {
		c.Lookup.Upstream = []config.Upstream{{BaseURL: base, HomeserverURL: w.svc.URL, UserID: "@herald:" + svcName,
			AccessToken: config.Secret(w.svcToken), AllowPrivate: true}}
		c.Lookup.UpstreamTimeout = config.Duration(time.Second)
		c.Admin.APITokens = []config.Secret{consoleToken}
	}
	w.here = start(t, mode, append([]func(*config.Config){cfg}, mutate...)...)
	w.here.sim.AddUser(bobUp) // Dendrite accepts onbind only for local users
	return w
}

// An address bound at the upstream Herald gets its invite delivered through
// onbind within a second of store-invite, signed so that the simulator's
// Synapse and Dendrite checks accept it; the email only says a Matrix invite
// is waiting; the console's timeline and the metrics name the upstream.
func TestUpstreamVouchedInviteDeliveredAtOnce(t *testing.T) {
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			w := startUpstream(t, mode, "bob@example.org", nil, nil)
			atok := w.here.env.Register(t, alice)
			start := time.Now()
			room, answer := w.here.storeInvite(t, atok, alice, "Bob@Example.org")
			// Within a second of store-invite, the homeserver has turned it
			// into a membership for the user the upstream vouched for.
			deadline := start.Add(time.Second)
			for len(w.here.sim.Accepted()) == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			acc := w.here.sim.Accepted()
			t.Logf("onbind accepted %s after store-invite was sent", time.Since(start).Round(time.Millisecond))
			if len(acc) != 1 {
				t.Fatalf("%s after store-invite: accepted %+v, onbind calls %v", time.Since(start), acc, calls(w.here.sim))
			}
			var a struct{ Token string }
			_ = json.Unmarshal(answer, &a)
			if acc[0].MXID != bobUp || acc[0].RoomID != room || acc[0].Token != a.Token || acc[0].Sender != alice {
				t.Fatalf("accepted %+v, want %s in %s with token %s", acc[0], bobUp, room, a.Token)
			}
			// The email is the notice, not an invite to bind the address.
			m := waitMail(t, w.here.smtp, "bob@example.org", "waiting", 0)
			if strings.Contains(m.Text, "sign-ed25519") || !strings.Contains(m.Text, "open your Matrix app") {
				t.Fatalf("notice mail:\n%s", m.Text)
			}
			// The invite is resolved and its record says which upstream vouched.
			inv, err := w.here.env.App.Invites().ByToken(a.Token)
			if err != nil || inv.State != invites.StateResolved || inv.ResolvedMXID != bobUp {
				t.Fatalf("invite %+v, %v", inv, err)
			}
			v, err := w.here.env.App.Invites().VouchFor(inv.ID)
			if err != nil || v == nil || v.Upstream != w.up.env.URL || v.MXID != bobUp || v.Outcome != "resolved" {
				t.Fatalf("vouch %+v, %v", v, err)
			}
			st := w.here.env.App.Upstream().Statuses()
			if len(st) != 1 || st[0].Hits != 1 || st[0].Calls != 1 || st[0].State != "ok" {
				t.Fatalf("statuses %+v", st)
			}
			// The console: the invite's timeline names the upstream, the
			// settings page shows its counts; Prometheus counts the same.
			tl := consoleGet(t, w.here, "/admin/api/invites/"+strconv.FormatUint(inv.ID, 10))
			if !strings.Contains(tl, `"kind":"vouched"`) || !strings.Contains(tl, "identity server "+w.up.env.URL+" vouched for "+bobUp) {
				t.Fatalf("timeline lacks the vouch: %s", tl)
			}
			if strings.Contains(tl, `"kind":"bound"`) || !strings.Contains(tl, `"kind":"upstream resolution","detail":"resolved"`) {
				t.Fatalf("timeline says the address was bound here, or lacks the resolution: %s", tl)
			}
			if set := consoleGet(t, w.here, "/admin/api/settings"); !strings.Contains(set, `"upstreams":[{"base_url":"`+w.up.env.URL+`","state":"ok","calls":1,"hits":1,"failures":0`) {
				t.Fatalf("settings lack the upstream block: %s", set)
			}
			metrics := httptest.NewServer(w.here.env.App.Metrics())
			defer metrics.Close()
			host := strings.TrimPrefix(w.up.env.URL, "http://")
			sc := testenv.GetMetrics(t, http.DefaultClient, metrics.URL)
			if v, _ := sc.Value("herald_upstream_lookups_total", "upstream", host); v != 1 {
				t.Fatalf("herald_upstream_lookups_total %v", v)
			}
			if v, _ := sc.Value("herald_upstream_hits_total", "upstream", host); v != 1 {
				t.Fatalf("herald_upstream_hits_total %v", v)
			}
			if v, ok := sc.Value("herald_upstream_failures_total", "upstream", host, "reason", "timeout"); !ok || v != 0 {
				t.Fatalf("herald_upstream_failures_total %v %v", v, ok)
			}
			// A second invite to the same address within the cache TTL asks nobody.
			w.here.storeInvite(t, atok, alice, "bob@example.org")
			waitAccepted(t, w.here.sim, 2)
			if st := w.here.env.App.Upstream().Statuses(); st[0].Calls != 1 {
				t.Fatalf("cached answer asked the upstream again: %+v", st)
			}
			// Herald's logs (debug level) carry neither the address, nor the
			// service user's access token, nor the upstream's pepper.
			status, hd := w.up.env.Do(t, "GET", "/_matrix/identity/v2/hash_details", nil, w.up.env.Register(t, "@peek:hs.test"))
			var details struct {
				Pepper string `json:"lookup_pepper"`
			}
			if json.Unmarshal(hd, &details); status != 200 || details.Pepper == "" {
				t.Fatalf("hash_details: %d %s", status, hd)
			}
			logs := strings.ToLower(w.here.env.Logs())
			for name, secret := range map[string]string{"address": "bob@example.org", "service token": w.svcToken, "pepper": details.Pepper} {
				if strings.Contains(logs, strings.ToLower(secret)) {
					t.Errorf("Herald's logs contain the %s", name)
				}
			}
		})
	}
}

// An upstream that hangs, or is down, does not hold store-invite beyond
// lookup.upstream_timeout, and the invite falls back to the invite email.
func TestUpstreamDownOrSlowFallsBackToEmail(t *testing.T) {
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); slow.Close() })
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close() // nothing listens there any more

	for name, target := range map[string]string{"slow": slow.URL, "down": downURL} {
		t.Run(name, func(t *testing.T) {
			w := startUpstream(t, hssim.Synapse, "", nil, func(*world) string { return target }, func(c *config.Config) {
				c.Lookup.UpstreamTimeout = config.Duration(300 * time.Millisecond)
			})
			atok := w.here.env.Register(t, alice)
			start := time.Now()
			w.here.storeInvite(t, atok, alice, "carol@example.org")
			t.Logf("store-invite answered in %s", time.Since(start).Round(time.Millisecond))
			if d := time.Since(start); d > 300*time.Millisecond+700*time.Millisecond {
				t.Fatalf("store-invite took %s with upstream_timeout 300ms", d)
			}
			m := waitMail(t, w.here.smtp, "carol@example.org", "invited you", 0)
			if !strings.Contains(m.Text, "sign-ed25519") {
				t.Fatalf("want the ordinary invite email, got:\n%s", m.Text)
			}
			st := w.here.env.App.Upstream().Statuses()
			if st[0].Failures != 1 || st[0].Hits != 0 {
				t.Fatalf("statuses %+v", st)
			}
			reason := "timeout"
			if name == "down" {
				reason = "unreachable"
			}
			if !strings.Contains(w.here.env.Logs(), "reason="+reason) {
				t.Fatalf("no %s failure logged:\n%s", reason, w.here.env.Logs())
			}
			if n := len(w.here.sim.Calls()); n != 0 {
				t.Fatalf("onbind calls %d, want none", n)
			}
		})
	}
}

// An upstream whose association signature does not verify is ignored (the
// invite is emailed as usual) and the failure logged.
func TestUpstreamBadSignatureIgnored(t *testing.T) {
	w := startUpstream(t, hssim.Synapse, "dave@example.org", nil, func(up *world) string {
		target, _ := url.Parse(up.env.URL)
		p := httputil.NewSingleHostReverseProxy(target)
		p.ModifyResponse = func(r *http.Response) error {
			if r.Request.URL.Path != "/_matrix/identity/api/v1/lookup" {
				return nil
			}
			body, _ := io.ReadAll(r.Body)
			var assoc map[string]any
			if err := json.Unmarshal(body, &assoc); err != nil {
				return err
			}
			// Signed by another key under the same server and key id.
			delete(assoc, "signatures")
			_, priv := keys.NewEphemeralKey()
			k := up.env.App.Ring().Current()
			forged, err := keys.SignJSON(assoc, "upstream.test", k.ID, priv)
			if err != nil {
				return err
			}
			body, _ = json.Marshal(forged)
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		}
		srv := httptest.NewServer(p)
		t.Cleanup(srv.Close)
		return srv.URL
	})
	atok := w.here.env.Register(t, alice)
	w.here.storeInvite(t, atok, alice, "dave@example.org")
	m := waitMail(t, w.here.smtp, "dave@example.org", "invited you", 0)
	if !strings.Contains(m.Text, "sign-ed25519") {
		t.Fatalf("want the ordinary invite email, got:\n%s", m.Text)
	}
	logs := w.here.env.Logs()
	if !strings.Contains(logs, "reason=bad_signature") || !strings.Contains(logs, "no signature verifies") {
		t.Fatalf("bad signature not logged:\n%s", logs)
	}
	if st := w.here.env.App.Upstream().Statuses(); st[0].Hits != 0 || st[0].Failures != 1 {
		t.Fatalf("statuses %+v", st)
	}
	if n := len(w.here.sim.Calls()); n != 0 {
		t.Fatalf("onbind calls %d, want none", n)
	}
}

// An upstream with terms of service is skipped (M_TERMS_NOT_SIGNED in the
// log and the console's status) unless accept_terms is set for it; with it
// set, Herald accepts them and the invite is vouched for.
func TestUpstreamTermsNotAcceptedSkipped(t *testing.T) {
	terms := func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{"privacy": {Version: "1.0", Languages: map[string]config.PolicyLanguage{
			"en": {Name: "Privacy", URL: "https://upstream.test/privacy-1.0.html"}}}}
	}
	for _, accept := range []bool{false, true} {
		t.Run("accept_terms="+strconv.FormatBool(accept), func(t *testing.T) {
			w := startUpstream(t, hssim.Synapse, "erin@example.org", terms, nil, func(c *config.Config) {
				c.Lookup.Upstream[0].AcceptTerms = accept
			})
			atok := w.here.env.Register(t, alice)
			w.here.storeInvite(t, atok, alice, "erin@example.org")
			st := w.here.env.App.Upstream().Statuses()
			if !accept {
				waitMail(t, w.here.smtp, "erin@example.org", "invited you", 0)
				if st[0].State != "M_TERMS_NOT_SIGNED" || st[0].Hits != 0 {
					t.Fatalf("statuses %+v", st)
				}
				if !strings.Contains(w.here.env.Logs(), "M_TERMS_NOT_SIGNED") {
					t.Fatalf("terms refusal not logged:\n%s", w.here.env.Logs())
				}
				return
			}
			waitAccepted(t, w.here.sim, 1)
			if st[0].State != "ok" || st[0].Hits != 1 {
				t.Fatalf("statuses %+v", st)
			}
		})
	}
}

// Herald's own binding wins over an upstream's answer, and an address that
// opted out is never looked up, even with an upstream's answer cached.
func TestUpstreamOwnBindingWinsAndOptOutNotLookedUp(t *testing.T) {
	w := startUpstream(t, hssim.Synapse, "frank@example.org", nil, nil)
	// frank also bound his address here, to another account.
	here := "@frank:" + simName
	ftok := w.here.registerSim(t, here)
	sid := w.here.validate(t, ftok, "frank@example.org", "secret2")
	w.here.bind(t, ftok, sid, "secret2", here)
	atok := w.here.env.Register(t, alice)
	status, body := w.here.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "frank@example.org", "room_id": "!own:hs.test", "sender": alice,
	}, atok)
	expectErr(t, status, body, 400, "M_THREEPID_IN_USE")
	if st := w.here.env.App.Upstream().Statuses(); st[0].Calls != 0 {
		t.Fatalf("a bound address was looked up upstream: %+v", st)
	}

	// grace is bound upstream: alice's invite is vouched for and delivered.
	gtok := w.up.registerSim(t, "@grace:"+simName)
	sid = w.up.validate(t, gtok, "grace@example.org", "secret3")
	w.up.bind(t, gtok, sid, "secret3", "@grace:"+simName)
	w.here.sim.AddUser("@grace:" + simName)
	_, answer := w.here.storeInvite(t, atok, alice, "grace@example.org")
	waitAccepted(t, w.here.sim, 1)
	var a struct{ Token string }
	_ = json.Unmarshal(answer, &a)
	// Through that invite's link grace opts out of alice's invites.
	if _, err := w.here.env.App.Invites().SetOptOut(a.Token, false, true); err != nil {
		t.Fatal(err)
	}
	// olivia's invite is stored (grace refused only alice) but not looked
	// up: it stays pending and the ordinary invite email goes out.
	otok := w.here.env.Register(t, "@olivia:hs.test")
	_, answer = w.here.storeInvite(t, otok, "@olivia:hs.test", "grace@example.org")
	_ = json.Unmarshal(answer, &a)
	m := waitMail(t, w.here.smtp, "grace@example.org", "invited you", 1)
	if !strings.Contains(m.Text, "sign-ed25519") {
		t.Fatalf("want the ordinary invite email, got:\n%s", m.Text)
	}
	inv, err := w.here.env.App.Invites().ByToken(a.Token)
	if err != nil || inv.State != invites.StatePending {
		t.Fatalf("invite after opt-out: %+v, %v", inv, err)
	}
	if v, _ := w.here.env.App.Invites().VouchFor(inv.ID); v != nil {
		t.Fatalf("vouch recorded for an opted-out address: %+v", v)
	}
}

const consoleToken = "upstream-test-console-token-0123456789"

// consoleGet GETs a console path (API or page) with the console API token.
func consoleGet(t *testing.T, w *world, path string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", path, nil)
	req.Header.Set("Authorization", "Bearer "+consoleToken)
	resp := w.env.DoRequest(t, req)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return string(body)
}

// A vouched invite whose resolve time falls while Herald is stopped is
// resolved and delivered when it starts again: the vouch is stored with the
// invite, not only in memory.
func TestUpstreamVouchSurvivesRestart(t *testing.T) {
	w := startUpstream(t, hssim.Synapse, "heidi@example.org", nil, nil)
	atok := w.here.env.Register(t, alice)
	_, answer := w.here.storeInvite(t, atok, alice, "heidi@example.org")
	// Herald's clock goes back an hour: its resolve time is not reached
	// before the restart.
	w.here.env.Clock.Advance(-time.Hour)
	var a struct{ Token string }
	_ = json.Unmarshal(answer, &a)
	inv, err := w.here.env.App.Invites().ByToken(a.Token)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := w.here.env.App.Invites().VouchFor(inv.ID); err != nil || v == nil || !v.Resolved.IsZero() || inv.State != invites.StatePending {
		t.Fatalf("before the restart: invite %s, vouch %+v, %v", inv.State, v, err)
	}
	w.here.env.Restart(t, func(*config.Config) { w.here.env.Clock.Advance(time.Hour) })
	acc := waitAccepted(t, w.here.sim, 1)
	if acc[0].MXID != bobUp || acc[0].Token != a.Token {
		t.Fatalf("accepted %+v", acc)
	}
	v, err := w.here.env.App.Invites().VouchFor(inv.ID)
	if err != nil || v == nil || v.Outcome != "resolved" {
		t.Fatalf("after the restart: vouch %+v, %v", v, err)
	}
}

// With lookup.upstream_email: none, a vouched invite queues no email at all.
func TestUpstreamEmailNone(t *testing.T) {
	w := startUpstream(t, hssim.Synapse, "ivan@example.org", nil, nil, func(c *config.Config) { c.Lookup.UpstreamEmail = "none" })
	atok := w.here.env.Register(t, alice)
	_, answer := w.here.storeInvite(t, atok, alice, "ivan@example.org")
	waitAccepted(t, w.here.sim, 1)
	var a struct{ Token string }
	_ = json.Unmarshal(answer, &a)
	inv, err := w.here.env.App.Invites().ByToken(a.Token)
	if err != nil || inv.MailID != 0 || !inv.MailedAt.IsZero() {
		t.Fatalf("invite %+v, %v: want no email queued", inv, err)
	}
	if n := len(w.here.smtp.Messages()); n != 0 {
		t.Fatalf("%d mails sent", n)
	}
	// Erasing the address's invites erases their vouches too.
	if v, _ := w.here.env.App.Invites().VouchFor(inv.ID); v == nil {
		t.Fatal("no vouch recorded")
	}
	if _, err := w.here.env.App.Invites().EraseAddress("ivan@example.org"); err != nil {
		t.Fatal(err)
	}
	if v, err := w.here.env.App.Invites().VouchFor(inv.ID); v != nil || err != nil {
		t.Fatalf("vouch after erasure: %+v, %v", v, err)
	}
}
