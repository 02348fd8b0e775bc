package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
)

// Dendrite's path: the unauthenticated v1 API (form-encoded store-invite),
// v1 validation and bind, and onbind checked the Dendrite way.
func TestV1FlowForDendrite(t *testing.T) {
	w := start(t, hssim.Dendrite, func(c *config.Config) { c.Compat.V1 = true })
	form := url.Values{"medium": {"email"}, "address": {"vic@example.org"}, "room_id": {"!v1:hs.test"},
		"sender": {alice}, "sender_display_name": {"Alice"}}
	req, _ := http.NewRequest("POST", "/_matrix/identity/api/v1/store-invite", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp := w.env.DoRequest(t, req)
	var ans strings.Builder
	buf := make([]byte, 8192)
	n, _ := resp.Body.Read(buf)
	ans.Write(buf[:n])
	if resp.StatusCode != 200 {
		t.Fatalf("v1 store-invite: %d %s", resp.StatusCode, ans.String())
	}
	if _, err := w.sim.AddStoreInviteAnswer("!v1:hs.test", alice, w.env.URL, []byte(ans.String())); err != nil {
		t.Fatal(err)
	}
	vic := "@vic:" + simName
	w.sim.AddUser(vic)
	status, body := w.env.Do(t, "POST", "/_matrix/identity/api/v1/validate/email/requestToken",
		map[string]any{"client_secret": "v1secret", "email": "vic@example.org", "send_attempt": 1}, "")
	if status != 200 {
		t.Fatalf("v1 requestToken: %d %s", status, body)
	}
	sid, _, token := tokenFromMail(t, waitMail(t, w.smtp, "vic@example.org", "Confirm", 0))
	status, body = w.env.Do(t, "POST", "/_matrix/identity/api/v1/validate/email/submitToken",
		map[string]any{"sid": sid, "client_secret": "v1secret", "token": token}, "")
	if status != 200 {
		t.Fatalf("v1 submitToken: %d %s", status, body)
	}
	status, body = w.env.Do(t, "GET", "/_matrix/identity/api/v1/3pid/getValidated3pid?sid="+sid+"&client_secret=v1secret", nil, "")
	if status != 200 {
		t.Fatalf("v1 getValidated3pid: %d %s", status, body)
	}
	status, body = w.env.Do(t, "POST", "/_matrix/identity/api/v1/3pid/bind",
		map[string]any{"sid": sid, "client_secret": "v1secret", "mxid": vic}, "")
	var a struct{ MXID string }
	if err := json.Unmarshal(body, &a); status != 200 || err != nil || a.MXID != vic {
		t.Fatalf("v1 bind: %d %s", status, body)
	}
	got := waitAccepted(t, w.sim, 1)
	if got[0].RoomID != "!v1:hs.test" || got[0].MXID != vic {
		t.Fatalf("accepted %+v", got)
	}
	status, body = w.env.Do(t, "GET", "/_matrix/identity/api/v1/lookup?medium=email&address=vic@example.org", nil, "")
	if status != 200 || !strings.Contains(string(body), vic) {
		t.Fatalf("v1 lookup: %d %s", status, body)
	}
}

// Dendrite accepts an onbind whose signed object verifies against any key in
// the invite event's public_keys and never calls key_validity_url. Whoever
// holds the invite email (its signurl carries the ephemeral private key)
// signs {mxid, token} with it and POSTs onbind to Dendrite directly after
// Herald revoked the invite: v1 answers list only the long-term key, so
// Dendrite refuses that forgery.
func TestRevokedInviteHoldsOnDendrite(t *testing.T) {
	w := start(t, hssim.Dendrite, func(c *config.Config) { c.Compat.V1 = true })
	form := url.Values{"medium": {"email"}, "address": {"mallory@example.org"}, "room_id": {"!rv:hs.test"},
		"sender": {alice}, "sender_display_name": {"Alice"}}
	req, _ := http.NewRequest("POST", "/_matrix/identity/api/v1/store-invite", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp := w.env.DoRequest(t, req)
	ans, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("v1 store-invite: %d %s", resp.StatusCode, ans)
	}
	if _, err := w.sim.AddStoreInviteAnswer("!rv:hs.test", alice, w.env.URL, ans); err != nil {
		t.Fatal(err)
	}
	mallory := "@mallory:" + simName
	w.sim.AddUser(mallory)

	// The email's signurl: token and ephemeral private key.
	mail := waitMail(t, w.smtp, "mallory@example.org", "", 0)
	m := regexp.MustCompile(`signurl=([^&\s"]+)`).FindStringSubmatch(mail.Text)
	if m == nil {
		t.Fatalf("no signurl in the invite email:\n%s", mail.Text)
	}
	raw, _ := url.QueryUnescape(m[1])
	signURL, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	token, privB64 := signURL.Query().Get("token"), signURL.Query().Get("private_key")
	seed, err := keys.DecodeBase64(privB64)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := w.env.App.Invites().ByToken(token)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.env.App.Invites().Revoke(inv.ID, "test"); err != nil {
		t.Fatal(err)
	}

	// Forge the onbind with the ephemeral key, as Dendrite verifies it.
	signed, err := keys.SignJSON(map[string]string{"mxid": mallory, "token": token}, testenv.ServerName, "ed25519:0", ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"medium": "email", "address": "mallory@example.org", "mxid": mallory,
		"invites": []any{map[string]any{"medium": "email", "address": "mallory@example.org", "mxid": mallory,
			"room_id": "!rv:hs.test", "sender": alice, "signed": signed}}})
	resp, err = http.Post(w.sim.URL+"/_matrix/federation/v1/3pid/onbind", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 || len(w.sim.Accepted()) != 0 {
		t.Fatalf("Dendrite accepted a revoked invite signed with the emailed key: %d, accepted %+v", resp.StatusCode, w.sim.Accepted())
	}
}
