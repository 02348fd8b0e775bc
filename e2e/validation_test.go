package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
)

const reqTokenPath = "/_matrix/identity/v2/validate/email/requestToken"
const submitPath = "/_matrix/identity/v2/validate/email/submitToken"

func TestRequestTokenErrorsAndIdempotency(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)

	for _, c := range []struct {
		body any
		code string
	}{
		{map[string]any{"client_secret": "abc", "email": "not-an-address", "send_attempt": 1}, "M_INVALID_EMAIL"},
		{map[string]any{"client_secret": "abc", "email": "a@b.example"}, "M_MISSING_PARAMS"},
		{map[string]any{"email": "a@b.example", "send_attempt": 1}, "M_MISSING_PARAMS"},
		{map[string]any{"client_secret": "a b", "email": "a@b.example", "send_attempt": 1}, "M_INVALID_PARAM"},
		{map[string]any{"client_secret": "abc", "email": "a@b.example", "send_attempt": "x"}, "M_INVALID_PARAM"},
		{map[string]any{"client_secret": 5, "email": "a@b.example", "send_attempt": 1}, "M_BAD_JSON"},
		{"not json", "M_NOT_JSON"},
	} {
		status, body := w.env.Do(t, "POST", reqTokenPath, c.body, tok)
		expectErr(t, status, body, 400, c.code)
	}
	status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "abc", "email": "a@b.example", "send_attempt": 1}, "")
	expectErr(t, status, body, 401, "M_UNAUTHORIZED")

	req := map[string]any{"client_secret": "idem", "email": "Carol@Example.org", "send_attempt": 1}
	sid := func() string {
		status, body := w.env.Do(t, "POST", reqTokenPath, req, tok)
		if status != 200 {
			t.Fatalf("requestToken: %d %s", status, body)
		}
		var r struct{ SID string }
		_ = json.Unmarshal(body, &r)
		return r.SID
	}
	first := sid()
	firstMail := waitMail(t, w.smtp, "carol@example.org", "Confirm", 0)
	if again := sid(); again != first {
		t.Fatalf("same send_attempt gave sid %s, then %s", first, again)
	}
	req["send_attempt"] = 2
	if again := sid(); again != first {
		t.Fatalf("higher send_attempt gave another sid")
	}
	second := waitMail(t, w.smtp, "carol@example.org", "Confirm", 1)
	// Exactly two validation mails: the repeat sent nothing.
	n := 0
	waitFor(t, "mail worker idle", func() bool { st, _ := w.env.App.Mailer().Stats(); return st.Pending == 0 })
	for _, m := range w.smtp.Messages() {
		if strings.EqualFold(m.To[0], "carol@example.org") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d validation mails, want 2", n)
	}
	// Either emailed token works.
	_, _, tok1 := tokenFromMail(t, firstMail)
	_, _, tok2 := tokenFromMail(t, second)
	if tok1 == tok2 {
		t.Fatal("a resend reused the token")
	}

	// submitToken errors.
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": first, "client_secret": "idem", "token": "wrong"}, tok)
	expectErr(t, status, body, 400, "M_TOKEN_INCORRECT")
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": first, "client_secret": "other", "token": tok1}, tok)
	expectErr(t, status, body, 404, "M_NO_VALID_SESSION")
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": "nope", "client_secret": "idem", "token": tok1}, tok)
	expectErr(t, status, body, 404, "M_NO_VALID_SESSION")
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": first}, tok)
	expectErr(t, status, body, 400, "M_MISSING_PARAMS")

	// Not validated yet.
	q := "?sid=" + first + "&client_secret=idem"
	status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/3pid/getValidated3pid"+q, nil, tok)
	expectErr(t, status, body, 400, "M_SESSION_NOT_VALIDATED")
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": first, "client_secret": "idem", "mxid": alice}, tok)
	expectErr(t, status, body, 400, "M_SESSION_NOT_VALIDATED")

	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": first, "client_secret": "idem", "token": tok1}, tok)
	if status != 200 {
		t.Fatalf("submitToken with the first token: %d %s", status, body)
	}
	status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/3pid/getValidated3pid"+q, nil, tok)
	var v struct {
		Medium, Address string
		ValidatedAt     int64 `json:"validated_at"`
	}
	if err := json.Unmarshal(body, &v); status != 200 || err != nil || v.Address != "carol@example.org" || v.Medium != "email" || v.ValidatedAt == 0 {
		t.Fatalf("getValidated3pid: %d %s", status, body)
	}
	// Bind for another user than the account's.
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": first, "client_secret": "idem", "mxid": "@mallory:hs.test"}, tok)
	expectErr(t, status, body, 403, "M_UNAUTHORIZED")
	// A user ID with a NUL or a bidi control is not a user ID, on bind as on
	// store-invite (one check, matrix.ValidUserID).
	for _, bad := range []string{"@alice\x00:hs.test", "@alice\u202e:hs.test"} {
		status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": first, "client_secret": "idem", "mxid": bad}, tok)
		expectErr(t, status, body, 400, "M_INVALID_PARAM")
	}
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": "x", "client_secret": "idem", "mxid": alice}, tok)
	expectErr(t, status, body, 404, "M_NO_VALID_SESSION")

	// Sessions expire 24 hours after their last change.
	w.env.Clock.Advance(25 * time.Hour)
	status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/3pid/getValidated3pid"+q, nil, tok)
	expectErr(t, status, body, 400, "M_SESSION_EXPIRED")
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": first, "client_secret": "idem", "token": tok2}, tok)
	expectErr(t, status, body, 400, "M_SESSION_EXPIRED")
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/3pid/bind", map[string]any{"sid": first, "client_secret": "idem", "mxid": alice}, tok)
	expectErr(t, status, body, 400, "M_SESSION_EXPIRED")
	// A new request after expiry starts a new session.
	req["send_attempt"] = 1
	if again := sid(); again == first {
		t.Fatal("an expired session was reused")
	}
}

func TestSubmitTokenLinkPage(t *testing.T) {
	// One account asks for more validation mails than its default burst.
	w := start(t, hssim.Synapse, func(c *config.Config) { c.Validation.RateLimits.Account.PerHour = 0 })
	tok := w.env.Register(t, alice)
	request := func(secret, address, next string) (sid, token string) {
		body := map[string]any{"client_secret": secret, "email": address, "send_attempt": 1}
		if next != "" {
			body["next_link"] = next
		}
		status, resp := w.env.Do(t, "POST", reqTokenPath, body, tok)
		if status != 200 {
			t.Fatalf("requestToken: %d %s", status, resp)
		}
		sid, _, token = tokenFromMail(t, waitMail(t, w.smtp, address, "Confirm", 0))
		return sid, token
	}
	get := func(q url.Values) *http.Response {
		req, _ := http.NewRequest("GET", submitPath+"?"+q.Encode(), nil)
		return w.env.DoRequest(t, req)
	}
	read := func(r *http.Response) string {
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				return b.String()
			}
		}
	}

	sid, token := request("page1", "p1@example.org", "")
	r := get(url.Values{"sid": {sid}, "client_secret": {"page1"}, "token": {"bad"}})
	if page := read(r); r.StatusCode != 400 || !strings.Contains(page, "not confirmed") || !strings.Contains(r.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("bad token page: %d %s", r.StatusCode, page)
	}
	r = get(url.Values{"sid": {sid}, "client_secret": {"page1"}, "token": {token}})
	if page := read(r); r.StatusCode != 200 || !strings.Contains(page, "Email address confirmed") || !strings.Contains(page, "Herald") {
		t.Fatalf("success page: %d %s", r.StatusCode, page)
	}

	sid, token = request("page2", "p2@example.org", "https://app.example.org/#/done")
	r = get(url.Values{"sid": {sid}, "client_secret": {"page2"}, "token": {token}})
	if r.StatusCode != http.StatusFound || r.Header.Get("Location") != "https://app.example.org/#/done" {
		t.Fatalf("next_link redirect: %d %q", r.StatusCode, r.Header.Get("Location"))
	}

	// Anything but an absolute http(s) URL is never followed: the page shows
	// success instead, and does not echo the link.
	for i, next := range []string{
		"javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>",
		"file:///etc/passwd", "//evil.example/x", "https:evil.example", "ftp://evil.example/", "vbscript:msgbox(1)",
	} {
		secret := fmt.Sprintf("page3x%d", i)
		sid, token = request(secret, fmt.Sprintf("p3x%d@example.org", i), next)
		r = get(url.Values{"sid": {sid}, "client_secret": {secret}, "token": {token}})
		if page := read(r); r.StatusCode != 200 || r.Header.Get("Location") != "" || !strings.Contains(page, "Email address confirmed") ||
			strings.Contains(page, "evil") || strings.Contains(strings.ToLower(page), "script:") {
			t.Fatalf("next_link %q was followed or echoed: %d %q", next, r.StatusCode, r.Header.Get("Location"))
		}
	}
}

// A session expires 24 hours after its LAST change (a new send_attempt, a
// submitted token), not after its creation; a repeated request is no change.
func TestSessionExpiresAfterLastChange(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)
	req := map[string]any{"client_secret": "life", "email": "erin@example.org", "send_attempt": 1}
	status, body := w.env.Do(t, "POST", reqTokenPath, req, tok)
	if status != 200 {
		t.Fatalf("requestToken: %d %s", status, body)
	}
	sid, _, _ := tokenFromMail(t, waitMail(t, w.smtp, "erin@example.org", "Confirm", 0))
	w.env.Clock.Advance(20 * time.Hour)
	req["send_attempt"] = 2 // a change, at 20 h
	if status, body = w.env.Do(t, "POST", reqTokenPath, req, tok); status != 200 {
		t.Fatalf("requestToken again: %d %s", status, body)
	}
	_, _, token2 := tokenFromMail(t, waitMail(t, w.smtp, "erin@example.org", "Confirm", 1))
	w.env.Clock.Advance(20 * time.Hour)
	if status, body = w.env.Do(t, "POST", reqTokenPath, req, tok); status != 200 { // a repeat, at 40 h: no change
		t.Fatalf("repeated requestToken: %d %s", status, body)
	}
	w.env.Clock.Advance(3 * time.Hour) // 43 h after creation, 23 h after the last change
	status, body = w.env.Do(t, "POST", submitPath, map[string]any{"sid": sid, "client_secret": "life", "token": token2}, tok)
	if status != 200 {
		t.Fatalf("submitToken 23 h after the last change: %d %s", status, body)
	}
	q := "?sid=" + sid + "&client_secret=life"
	w.env.Clock.Advance(23 * time.Hour) // 23 h after the submit
	if status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/3pid/getValidated3pid"+q, nil, tok); status != 200 {
		t.Fatalf("getValidated3pid 23 h after the submit: %d %s", status, body)
	}
	w.env.Clock.Advance(2 * time.Hour) // 25 h after the submit
	status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/3pid/getValidated3pid"+q, nil, tok)
	expectErr(t, status, body, 400, "M_SESSION_EXPIRED")
}

func TestDeclineAndOptOutPages(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok := w.env.Register(t, alice)
	_, ans := w.storeInvite(t, atok, alice, "dora@example.org")
	token := tokenOf(t, ans)
	mail := waitMail(t, w.smtp, "dora@example.org", "", 0)
	if !strings.Contains(mail.Text, "/_herald/invites/decline?token=") || !strings.Contains(mail.Text, "/_herald/invites/optout?token=") {
		t.Fatalf("invite email lacks decline/opt-out links:\n%s", mail.Text)
	}

	req, _ := http.NewRequest("GET", "/_herald/invites/optout?token="+url.QueryEscape(token), nil)
	r := w.env.DoRequest(t, req)
	if r.StatusCode != 200 || r.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("opt-out page: %d", r.StatusCode)
	}
	// Opt out from this sender: a new invite from alice is refused, and no mail.
	r = postForm(t, w.env, "/_herald/invites/optout", url.Values{"token": {token}, "scope": {"sender"}, "action": {"optout"}})
	if r.StatusCode != 200 {
		t.Fatalf("opt-out: %d", r.StatusCode)
	}
	mails := len(w.smtp.Messages())
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "Dora@example.org", "room_id": "!other:hs.test", "sender": alice,
	}, atok)
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	// Another sender is still welcome.
	btok := w.env.Register(t, "@bert:hs.test")
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "dora@example.org", "room_id": "!bert:hs.test", "sender": "@bert:hs.test",
	}, btok)
	if status != 200 {
		t.Fatalf("store-invite from another sender: %d %s", status, body)
	}
	// Opt out from anyone, then undo both.
	postForm(t, w.env, "/_herald/invites/optout", url.Values{"token": {token}, "scope": {"anyone"}, "action": {"optout"}})
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "dora@example.org", "room_id": "!bert2:hs.test", "sender": "@bert:hs.test",
	}, btok)
	expectErr(t, status, body, 403, "M_FORBIDDEN")
	postForm(t, w.env, "/_herald/invites/optout", url.Values{"token": {token}, "scope": {"anyone"}, "action": {"undo"}})
	postForm(t, w.env, "/_herald/invites/optout", url.Values{"token": {token}, "scope": {"sender"}, "action": {"undo"}})
	status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "dora@example.org", "room_id": "!other:hs.test", "sender": alice,
	}, atok)
	if status != 200 {
		t.Fatalf("store-invite after undo: %d %s", status, body)
	}
	waitFor(t, "mail", func() bool { return len(w.smtp.Messages()) >= mails+2 })

	// Decline, then undo: the ephemeral key is invalid, then valid again.
	r = postForm(t, w.env, "/_herald/invites/decline", url.Values{"token": {token}, "action": {"decline"}})
	if r.StatusCode != 200 || ephemeralValid(t, w.env, ans) {
		t.Fatalf("decline: %d", r.StatusCode)
	}
	r = postForm(t, w.env, "/_herald/invites/decline", url.Values{"token": {token}, "action": {"decline"}})
	if r.StatusCode != http.StatusConflict {
		t.Fatalf("declining twice: %d", r.StatusCode)
	}
	r = postForm(t, w.env, "/_herald/invites/decline", url.Values{"token": {token}, "action": {"undo"}})
	if r.StatusCode != 200 || !ephemeralValid(t, w.env, ans) {
		t.Fatalf("undo decline: %d", r.StatusCode)
	}
	// Unknown tokens get a page, not an error.
	req, _ = http.NewRequest("GET", "/_herald/invites/decline?token=unknown", nil)
	if r = w.env.DoRequest(t, req); r.StatusCode != 404 {
		t.Fatalf("unknown token: %d", r.StatusCode)
	}
}

func TestRetentionErasesSecrets(t *testing.T) {
	w := start(t, hssim.Synapse)
	atok, _, _ := bindBob(t, w)
	waitDelivered(t, w, 1)
	_, ans := w.storeInvite(t, atok, alice, "erin@example.org")
	inv, _ := w.env.App.Invites().ByToken(tokenOf(t, ans))
	if err := w.env.App.Invites().Revoke(inv.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if n, err := w.env.App.Invites().EraseSecrets(); err != nil || n != 0 {
		t.Fatalf("EraseSecrets before retention = %d, %v", n, err)
	}
	w.env.WaitFirstSweeps(t, "invite-erase") // the server's own pass, before the clock moves
	w.env.Clock.Advance(31 * 24 * time.Hour)
	if n, err := w.env.App.Invites().EraseSecrets(); err != nil || n != 2 {
		t.Fatalf("EraseSecrets = %d, %v", n, err)
	}
	got, err := w.env.App.Invites().Get(inv.ID)
	if err != nil || got.Token != "" || got.EphemeralPrivate != "" || got.State != "revoked" || got.RoomID == "" {
		t.Fatalf("after retention: %+v %v", got, err)
	}
	if _, err := w.env.App.Invites().ByToken(tokenOf(t, ans)); err == nil {
		t.Fatal("the token still finds the invite")
	}
}
