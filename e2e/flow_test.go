package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
)

const alice = "@alice:hs.test"

func TestBindDeliversToSynapseAndDendrite(t *testing.T) {
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			w := start(t, mode)
			atok := w.env.Register(t, alice)
			room1, _ := w.storeInvite(t, atok, alice, "Bob@Example.org")
			room2, _ := w.storeInvite(t, atok, alice, "bob@example.org")
			waitMail(t, w.smtp, "bob@example.org", "", 1) // both invite emails

			bob := "@bob:" + simName
			btok := w.registerSim(t, bob)
			sid := w.validate(t, btok, "bob@EXAMPLE.org", "secret1")
			assoc := w.bind(t, btok, sid, "secret1", bob)

			// The association is signed by Herald's current key.
			ring := w.env.App.Ring()
			k := ring.Current()
			if err := keys.VerifyJSON(json.RawMessage(assoc), testenv.ServerName, k.ID, k.Public); err != nil {
				t.Fatalf("association signature: %v (%s)", err, assoc)
			}
			var a struct{ Address, Medium, MXID string }
			_ = json.Unmarshal(assoc, &a)
			if a.Address != "bob@example.org" || a.MXID != bob || a.Medium != "email" {
				t.Fatalf("association %s", assoc)
			}
			var fields map[string]json.RawMessage
			_ = json.Unmarshal(assoc, &fields)
			for _, f := range []string{"address", "medium", "mxid", "not_before", "not_after", "ts", "signatures"} {
				if fields[f] == nil {
					t.Fatalf("association lacks %s: %s", f, assoc)
				}
			}

			got := waitAccepted(t, w.sim, 2)
			waitDelivered(t, w, 1)
			rooms := map[string]bool{}
			for _, g := range got {
				if g.MXID != bob || g.Sender != alice {
					t.Errorf("accepted %+v", g)
				}
				rooms[g.RoomID] = true
			}
			if len(got) != 2 || !rooms[room1] || !rooms[room2] {
				t.Fatalf("accepted %+v, want one invite for each of %s and %s", got, room1, room2)
			}
			// One delivery, one call, carrying exactly {mxid, token} signed.
			cs := w.sim.Calls()
			if len(cs) != 1 || cs[0].Method != "POST" || cs[0].Status != 200 {
				t.Fatalf("onbind calls %v", calls(w.sim))
			}
			var body struct {
				Medium, Address, MXID string
				Invites               []map[string]json.RawMessage
			}
			if err := json.Unmarshal(cs[0].Body, &body); err != nil || body.MXID != bob || body.Address != "bob@example.org" || body.Medium != "email" || len(body.Invites) != 2 {
				t.Fatalf("onbind body %s", cs[0].Body)
			}
			for _, inv := range body.Invites {
				if len(inv) != 6 || inv["medium"] == nil || inv["address"] == nil || inv["mxid"] == nil || inv["room_id"] == nil || inv["sender"] == nil {
					t.Fatalf("an invite must be exactly {medium, address, mxid, room_id, sender, signed}: %s", cs[0].Body)
				}
				var signed struct {
					MXID, Token string
					Signatures  map[string]map[string]string
				}
				var keysOf map[string]json.RawMessage
				_ = json.Unmarshal(inv["signed"], &keysOf)
				if err := json.Unmarshal(inv["signed"], &signed); err != nil || len(keysOf) != 3 || signed.MXID != bob || signed.Token == "" {
					t.Fatalf("signed must be exactly {mxid, token, signatures}: %s", inv["signed"])
				}
				// One signature, by Herald's key (the one of the invite).
				if len(signed.Signatures) != 1 || len(signed.Signatures[testenv.ServerName]) != 1 {
					t.Fatalf("signed must carry exactly one signature by %s: %s", testenv.ServerName, inv["signed"])
				}
				if err := keys.VerifyJSON(inv["signed"], testenv.ServerName, k.ID, k.Public); err != nil {
					t.Fatalf("signed not signed by the invite's key: %v", err)
				}
			}
			waitDelivered(t, w, 1)

			// Lookups find the binding now, and store-invite refuses.
			if m := lookupV2(t, w.env, atok, "bob@example.org"); m != bob {
				t.Fatalf("lookup = %q, want %s", m, bob)
			}
			status, resp := w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
				"medium": "email", "address": "bob@example.org", "room_id": "!again:hs.test", "sender": alice,
			}, atok)
			expectErr(t, status, resp, 400, "M_THREEPID_IN_USE")

			// Invites are resolved.
			list, _, err := w.env.App.Invites().List(invites.Filter{Address: "bob@example.org"})
			if err != nil {
				t.Fatal(err)
			}
			for _, inv := range list {
				if inv.State != invites.StateResolved || inv.ResolvedMXID != bob {
					t.Errorf("invite %d: %s %s", inv.ID, inv.State, inv.ResolvedMXID)
				}
			}
		})
	}
}

func waitDelivered(t *testing.T, w *world, n int) []invites.Delivery {
	t.Helper()
	var list []invites.Delivery
	waitFor(t, "deliveries delivered", func() bool {
		var err error
		list, _, err = w.env.App.Deliveries().List(invites.DeliveryFilter{State: invites.DeliveryDelivered})
		return err == nil && len(list) >= n
	})
	return list
}

func waitDeliveryState(t *testing.T, w *world, state invites.DeliveryState) invites.Delivery {
	t.Helper()
	var list []invites.Delivery
	waitFor(t, "a delivery in state "+string(state), func() bool {
		list, _, _ = w.env.App.Deliveries().List(invites.DeliveryFilter{State: state})
		return len(list) > 0
	})
	return list[0]
}

// bindBob stores one invite for bob@example.org, then validates and binds it.
func bindBob(t *testing.T, w *world) (atok, btok, sid string) {
	t.Helper()
	atok = w.env.Register(t, alice)
	w.storeInvite(t, atok, alice, "bob@example.org")
	btok = w.registerSim(t, "@bob:"+simName)
	sid = w.validate(t, btok, "bob@example.org", "s3cret")
	w.bind(t, btok, sid, "s3cret", "@bob:"+simName)
	return
}

func TestPutFallback(t *testing.T) {
	w := start(t, hssim.Synapse)
	w.sim.PutOnly(true)
	bindBob(t, w)
	waitAccepted(t, w.sim, 1)
	d := waitDelivered(t, w, 1)[0]
	if len(d.Attempts) != 1 || d.Attempts[0].Method != "PUT" || !d.Attempts[0].OK {
		t.Fatalf("attempts %+v", d.Attempts)
	}
	if c := calls(w.sim); len(c) != 2 || c[0] != "POST->404" || c[1] != "PUT->200" {
		t.Fatalf("calls %v", c)
	}
}

func TestRetryOn5xxAnd429(t *testing.T) {
	w := start(t, hssim.Synapse)
	w.sim.Fail(2, 503, "")
	bindBob(t, w)
	waitAccepted(t, w.sim, 1)
	d := waitDelivered(t, w, 1)[0]
	if len(d.Attempts) != 3 || d.Attempts[0].Status != 503 || !d.Attempts[0].Retryable || !d.Attempts[2].OK {
		t.Fatalf("attempts %+v", d.Attempts)
	}

	w2 := start(t, hssim.Dendrite)
	w2.sim.Fail(1, 429, "1")
	bindBob(t, w2)
	waitAccepted(t, w2.sim, 1)
	d = waitDelivered(t, w2, 1)[0]
	if len(d.Attempts) != 2 || d.Attempts[0].Status != 429 {
		t.Fatalf("attempts %+v", d.Attempts)
	}
	if gap := d.Attempts[1].At.Sub(d.Attempts[0].At); gap < time.Second {
		t.Fatalf("Retry-After: 1 not honoured: retried after %v", gap)
	}
}

func TestNetworkErrorAndHangAreRetried(t *testing.T) {
	w := start(t, hssim.Synapse)
	w.sim.Hang(true)
	bindBob(t, w)
	waitFor(t, "a timed-out attempt", func() bool {
		d, _, _ := w.env.App.Deliveries().List(invites.DeliveryFilter{})
		return len(d) == 1 && len(d[0].Attempts) >= 1
	})
	w.sim.Hang(false)
	waitAccepted(t, w.sim, 1)
	d := waitDelivered(t, w, 1)[0]
	if d.Attempts[0].Status != 0 || !d.Attempts[0].Retryable || d.Attempts[0].Reply == "" {
		t.Fatalf("first attempt %+v", d.Attempts[0])
	}
}

func TestPermanentFailureOn4xx(t *testing.T) {
	w := start(t, hssim.Synapse)
	w.sim.Fail(-1, 403, "")
	bindBob(t, w)
	d := waitDeliveryState(t, w, invites.DeliveryFailed)
	if len(d.Attempts) != 1 || d.Attempts[0].Status != 403 || !strings.Contains(d.LastError, "403") {
		t.Fatalf("delivery %+v", d)
	}
	// An operator retry after the homeserver is fixed delivers it.
	w.sim.Fail(0, 0, "")
	if err := w.env.App.Deliveries().Retry(d.ID); err != nil {
		t.Fatal(err)
	}
	waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)
	got, err := w.env.App.Deliveries().ByInvite(d.InviteIDs[0])
	if err != nil || len(got) != 1 || got[0].State != invites.DeliveryDelivered || len(got[0].Attempts) != 2 {
		t.Fatalf("ByInvite: %+v %v", got, err)
	}
	st, _ := w.env.App.Deliveries().Stats()
	if st.Delivered != 1 || st.Failed != 0 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGiveUp(t *testing.T) {
	w := start(t, hssim.Synapse, func(c *configT) { c.Delivery.GiveUpAfter = durationT(200 * time.Millisecond) })
	w.sim.Fail(-1, 502, "")
	bindBob(t, w)
	d := waitDeliveryState(t, w, invites.DeliveryFailed)
	if !strings.Contains(d.LastError, "gave up") || len(d.Attempts) < 2 {
		t.Fatalf("delivery %+v", d)
	}
}

func TestRestartWhileRetryingDeliversOnce(t *testing.T) {
	w := start(t, hssim.Synapse)
	w.sim.Down(true)
	bindBob(t, w)
	waitFor(t, "failed attempts", func() bool { return len(w.sim.Calls()) >= 2 })
	w.env.Restart(t)
	w.sim.Down(false)
	waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)
	w.env.Restart(t) // nothing is sent again after a restart
	st, _ := w.env.App.Deliveries().Stats()
	if n := len(w.sim.Accepted()); n != 1 || st.Delivered != 1 || st.Pending != 0 {
		t.Fatalf("accepted %d, stats %+v", n, st)
	}
}

func TestRevokedExpiredDeclinedNeverDelivered(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok := w.env.Register(t, alice)
	w.env.WaitFirstSweeps(t, "invite-expiry") // the server's own pass, before the clock moves
	_, expAns := w.storeInvite(t, atok, alice, "bob@example.org")
	w.env.Clock.Advance(8 * 24 * time.Hour) // past invites.expiry (7 days)
	if ephemeralValid(t, w.env, expAns) {
		t.Fatal("an expired invite's ephemeral key is valid before the sweeper ran")
	}
	if n, err := w.env.App.Invites().ExpireDue(); err != nil || n != 1 {
		t.Fatalf("ExpireDue = %d, %v", n, err)
	}
	_, revAns := w.storeInvite(t, atok, alice, "bob@example.org")
	_, decAns := w.storeInvite(t, atok, alice, "bob@example.org")
	room, liveAns := w.storeInvite(t, atok, alice, "bob@example.org")

	rev, _ := w.env.App.Invites().ByToken(tokenOf(t, revAns))
	if err := w.env.App.Invites().Revoke(rev.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if err := w.env.App.Invites().Revoke(rev.ID, "test"); err == nil {
		t.Fatal("revoking twice succeeded")
	}
	// The invitee declines one through the page in the email.
	form := url.Values{"token": {tokenOf(t, decAns)}, "action": {"decline"}}
	resp := postForm(t, w.env, "/_herald/invites/decline", form)
	if resp.StatusCode != 200 {
		t.Fatalf("decline: %d", resp.StatusCode)
	}
	for _, ans := range [][]byte{expAns, revAns, decAns} {
		if ephemeralValid(t, w.env, ans) {
			t.Errorf("ephemeral key of a finished invite still valid")
		}
	}
	if !ephemeralValid(t, w.env, liveAns) {
		t.Errorf("ephemeral key of the live invite invalid")
	}

	btok := w.registerSim(t, "@bob:"+simName)
	sid := w.validate(t, btok, "bob@example.org", "sec")
	w.bind(t, btok, sid, "sec", "@bob:"+simName)
	got := waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)
	if len(got) != 1 || got[0].RoomID != room {
		t.Fatalf("accepted %+v, want only %s", got, room)
	}
	var body struct{ Invites []any }
	_ = json.Unmarshal(w.sim.Calls()[0].Body, &body)
	if len(body.Invites) != 1 {
		t.Fatalf("onbind carried %d invites", len(body.Invites))
	}
}

// An invite past its expiry is not delivered even before the sweeper marked
// it, and binding the same address again delivers nothing already resolved.
func TestUnsweptExpiredAndResolvedNotDeliveredAgain(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok := w.env.Register(t, alice)
	w.storeInvite(t, atok, alice, "bob@example.org")
	w.env.Clock.Advance(7*24*time.Hour + time.Minute) // expired, not swept
	_, liveAns := w.storeInvite(t, atok, alice, "bob@example.org")
	bob := "@bob:" + simName
	btok := w.registerSim(t, bob)
	sid := w.validate(t, btok, "bob@example.org", "sec")
	w.bind(t, btok, sid, "sec", bob)
	got := waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)
	live, _ := w.env.App.Invites().ByToken(tokenOf(t, liveAns))
	if len(got) != 1 || got[0].Token != live.Token {
		t.Fatalf("accepted %+v, want only the live invite", got)
	}
	// The same user binds the address again (a second session).
	sid2 := w.validate(t, btok, "bob@example.org", "sec2")
	w.bind(t, btok, sid2, "sec2", bob)
	st, _ := w.env.App.Deliveries().Stats()
	if st.Pending+st.Delivered+st.Failed+st.Cancelled != 1 || len(w.sim.Calls()) != 1 {
		t.Fatalf("a re-bind queued another delivery: %+v, %d calls", st, len(w.sim.Calls()))
	}
}

func TestRecycledAddressGetsNoOldInvites(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok, btok, sid := bindBob(t, w)
	waitAccepted(t, w.sim, 1)
	waitDelivered(t, w, 1)
	// Bob unbinds with his session; the address is recycled to Carol.
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/unbind", map[string]any{
		"sid": sid, "client_secret": "s3cret", "mxid": "@bob:" + simName,
		"threepid": map[string]string{"medium": "email", "address": "bob@example.org"},
	}, btok)
	if status != 200 {
		t.Fatalf("unbind: %d %s", status, body)
	}
	if m := lookupV2(t, w.env, atok, "bob@example.org"); m != "" {
		t.Fatalf("still bound to %s", m)
	}
	carol := "@carol:" + simName
	ctok := w.registerSim(t, carol)
	csid := w.validate(t, ctok, "bob@example.org", "carolsecret")
	w.bind(t, ctok, csid, "carolsecret", carol)
	if m := lookupV2(t, w.env, atok, "bob@example.org"); m != carol {
		t.Fatalf("lookup = %q", m)
	}
	st, _ := w.env.App.Deliveries().Stats()
	if st.Pending+st.Delivered+st.Failed != 1 || len(w.sim.Accepted()) != 1 {
		t.Fatalf("recycled address got old invites: %+v, accepted %d", st, len(w.sim.Accepted()))
	}
}

func TestSignedUnbind(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok, _, _ := bindBob(t, w)
	payload := map[string]any{"mxid": "@bob:" + simName, "threepid": map[string]string{"medium": "email", "address": "bob@example.org"}}
	raw, _ := json.Marshal(payload)
	send := func(mutate func(*http.Request)) (int, []byte) {
		req, _ := http.NewRequest("POST", w.env.URL+"/_matrix/identity/v2/3pid/unbind", bytes.NewReader(raw))
		req.Header.Set("Content-Type", "application/json")
		mutate(req)
		resp := w.env.DoRequest(t, req)
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.Bytes()
	}
	u, _ := url.Parse(w.env.URL)
	// No authorisation at all.
	status, body := send(func(*http.Request) {})
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	// Signed for another destination, in either form.
	status, body = send(func(r *http.Request) { w.sim.SignRequest(r, "elsewhere.test", raw) })
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	status, body = send(func(r *http.Request) { w.sim.SignRequestSynapse(r, "elsewhere.test", raw) })
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	// A signature over another body.
	status, body = send(func(r *http.Request) { w.sim.SignRequestSynapse(r, u.Host, []byte(`{"other":1}`)) })
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	// A signature by a key sim.test does not publish.
	status, body = send(func(r *http.Request) {
		_, forged := keys.NewEphemeralKey()
		h, _ := identity.SignXMatrixIdentity("POST", r.URL.RequestURI(), raw, simName, u.Host, w.sim.KeyID, forged)
		r.Header.Set("Authorization", h)
	})
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	if m := lookupV2(t, w.env, atok, "bob@example.org"); m == "" {
		t.Fatal("a refused unbind removed the binding")
	}
	// Signed exactly as Synapse (1.58 and later) signs it: destination_is =
	// the id_server the client bound with (the host of Herald's URL), and the
	// same name as destination in the header.
	var header string
	status, body = send(func(r *http.Request) {
		w.sim.SignRequestSynapse(r, u.Host, raw)
		header = r.Header.Get("Authorization")
	})
	if want := regexp.MustCompile(`^X-Matrix origin="` + regexp.QuoteMeta(simName) + `",key="ed25519:[^"]+",sig="[A-Za-z0-9+/]+",destination="` + regexp.QuoteMeta(u.Host) + `"$`); !want.MatchString(header) {
		t.Fatalf("the helper does not build Synapse's header: %s", header)
	}
	if status != 200 {
		t.Fatalf("Synapse-signed unbind: %d %s", status, body)
	}
	if m := lookupV2(t, w.env, atok, "bob@example.org"); m != "" {
		t.Fatalf("still bound to %s", m)
	}
}

// Every other form real homeservers send is accepted: Synapse before 1.58
// (no destination in the header), Synapse's form with server_name as
// destination_is, the server-server form with destination in the header or
// (Dendrite, servers before MSC3383) without it.
func TestSignedUnbindOtherForms(t *testing.T) {
	for name, sign := range map[string]func(s *hssim.Sim, r *http.Request, b []byte, host string){
		"synapse_legacy_header": func(s *hssim.Sim, r *http.Request, b []byte, host string) { s.SignRequestSynapseLegacy(r, host, b) },
		"destination_is_servername": func(s *hssim.Sim, r *http.Request, b []byte, _ string) {
			s.SignRequestSynapse(r, testenv.ServerName, b)
		},
		"destination":             func(s *hssim.Sim, r *http.Request, b []byte, _ string) { s.SignRequest(r, testenv.ServerName, b) },
		"destination_public_host": func(s *hssim.Sim, r *http.Request, b []byte, host string) { s.SignRequest(r, host, b) },
		"dendrite_no_destination": func(s *hssim.Sim, r *http.Request, b []byte, _ string) {
			s.SignRequestNoDestination(r, testenv.ServerName, b)
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := start(t, hssim.Synapse)
			atok, _, _ := bindBob(t, w)
			u, _ := url.Parse(w.env.URL)
			raw, _ := json.Marshal(map[string]any{"mxid": "@bob:" + simName, "threepid": map[string]string{"medium": "email", "address": "bob@example.org"}})
			req, _ := http.NewRequest("POST", w.env.URL+"/_matrix/identity/v2/3pid/unbind", bytes.NewReader(raw))
			sign(w.sim, req, raw, u.Host)
			resp := w.env.DoRequest(t, req)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("unbind: %d", resp.StatusCode)
			}
			if m := lookupV2(t, w.env, atok, "bob@example.org"); m != "" {
				t.Fatalf("still bound to %s", m)
			}
		})
	}
}

// A request validly signed by a homeserver that is not the mxid's is refused.
func TestSignedUnbindWrongOrigin(t *testing.T) {
	other := hssim.New(t, "other2.test", hssim.Synapse)
	w := start(t, hssim.Synapse, func(c *configT) { c.Federation.Servers["other2.test"] = other.URL })
	atok, _, _ := bindBob(t, w)
	u, _ := url.Parse(w.env.URL)
	raw, _ := json.Marshal(map[string]any{"mxid": "@bob:" + simName, "threepid": map[string]string{"medium": "email", "address": "bob@example.org"}})
	send := func(s *hssim.Sim) (int, []byte) {
		req, _ := http.NewRequest("POST", w.env.URL+"/_matrix/identity/v2/3pid/unbind", bytes.NewReader(raw))
		s.SignRequestSynapse(req, u.Host, raw)
		resp := w.env.DoRequest(t, req)
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.Bytes()
	}
	status, body := send(other) // a valid signature, but not from bob's homeserver
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	if !strings.Contains(string(body), "not signed by the homeserver of mxid") {
		t.Fatalf("refused for another reason than the origin: %s", body)
	}
	// The origin is compared with the mxid's server before any key is fetched.
	if n := other.KeyFetches(); n != 0 {
		t.Fatalf("the keys of a foreign origin were fetched %d times", n)
	}
	if m := lookupV2(t, w.env, atok, "bob@example.org"); m == "" {
		t.Fatal("binding removed")
	}
	// The same request signed by bob's own homeserver goes through.
	if status, body := send(w.sim); status != 200 {
		t.Fatalf("unbind by bob's homeserver: %d %s", status, body)
	}
}

func tokenOf(t *testing.T, answer []byte) string {
	t.Helper()
	var a struct{ Token string }
	if err := json.Unmarshal(answer, &a); err != nil || a.Token == "" {
		t.Fatalf("no token in %s", answer)
	}
	return a.Token
}

func ephemeralValid(t *testing.T, env *testenv.Env, answer []byte) bool {
	t.Helper()
	var a struct {
		PublicKeys []struct {
			PublicKey string `json:"public_key"`
		} `json:"public_keys"`
	}
	_ = json.Unmarshal(answer, &a)
	if len(a.PublicKeys) < 2 {
		t.Fatalf("no ephemeral key in %s", answer)
	}
	status, body := env.Do(t, "GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(a.PublicKeys[1].PublicKey), nil, "")
	if status != 200 {
		t.Fatalf("isvalid: %d %s", status, body)
	}
	return strings.Contains(string(body), "true")
}

func postForm(t *testing.T, env *testenv.Env, path string, form url.Values) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", env.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return env.DoRequest(t, req)
}

// A key rotation between store-invite and bind must not break the invite: the
// homeserver checks `signed` against the keys in the invite event, which are
// the ones Herald answered at store-invite time.
func TestKeyRotationBetweenInviteAndBind(t *testing.T) {
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			w := start(t, mode)
			atok := w.env.Register(t, alice)
			w.storeInvite(t, atok, alice, "bob@example.org")
			if _, err := w.env.App.Ring().Rotate(); err != nil {
				t.Fatal(err)
			}
			bob := "@bob:" + simName
			btok := w.registerSim(t, bob)
			sid := w.validate(t, btok, "bob@example.org", "s3cret")
			w.bind(t, btok, sid, "s3cret", bob)
			if got := waitAccepted(t, w.sim, 1); len(got) != 1 || got[0].MXID != bob {
				t.Fatalf("accepted %+v", got)
			}
			waitDelivered(t, w, 1)
		})
	}
}

// Unbinds naming many different servers (each its own mxid's, so each needs
// a key fetch) are cut off by the global fetch limit: the first burst is
// fetched, the rest answered 429 without any outbound request.
func TestSignedUnbindKeyFetchLimit(t *testing.T) {
	var fetches atomic.Int64
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		http.Error(w, "{}", http.StatusNotFound)
	}))
	defer trap.Close()
	const n = 40
	w := start(t, hssim.Synapse, func(c *configT) {
		for i := range n {
			c.Federation.Servers[fmt.Sprintf("s%d.test", i)] = trap.URL
		}
	})
	u, _ := url.Parse(w.env.URL)
	limited := 0
	for i := range n {
		server := fmt.Sprintf("s%d.test", i)
		raw, _ := json.Marshal(map[string]any{"mxid": "@x:" + server, "threepid": map[string]string{"medium": "email", "address": "x@example.org"}})
		req, _ := http.NewRequest("POST", w.env.URL+"/_matrix/identity/v2/3pid/unbind", bytes.NewReader(raw))
		req.Header.Set("Authorization", fmt.Sprintf(`X-Matrix origin="%s",key="ed25519:a",sig="c2ln",destination="%s"`, server, u.Host))
		resp := w.env.DoRequest(t, req)
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 403:
		case 429:
			limited++
			expectErr(t, resp.StatusCode, b.Bytes(), 429, "M_LIMIT_EXCEEDED")
		default:
			t.Fatalf("unbind %d: %d %s", i, resp.StatusCode, b.Bytes())
		}
	}
	if got := fetches.Load(); got+int64(limited) != n || got > 25 || limited == 0 {
		t.Fatalf("%d fetches and %d refused with 429 for %d servers", got, limited, n)
	}
}
