package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
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
