package invites_test

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
)

var tokenRE = regexp.MustCompile(`^[0-9a-zA-Z.=_-]{22,255}$`)

func TestStoreInviteAnswerAndEmail(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	body := inviteBody(alice, "Invitee.Person@Example.ORG")
	body["org.matrix.web_client_location"] = "https://evil.example.net/phish"
	body["custom_key"] = "kept"
	a := e.storeInvite(t, tok, body)

	if !tokenRE.MatchString(a.Token) || len(a.Token) < 43 {
		t.Errorf("token %q: want >= 128 bits in [0-9a-zA-Z.=_-]", a.Token)
	}
	if a.DisplayName != "i...@e..." {
		t.Errorf("display_name = %q", a.DisplayName)
	}
	ring := e.App.Ring()
	if a.PublicKey != ring.Current().PublicBase64() {
		t.Errorf("public_key = %q, want the long-term key", a.PublicKey)
	}
	if len(a.PublicKeys) != 2 {
		t.Fatalf("public_keys = %+v", a.PublicKeys)
	}
	if a.PublicKeys[0].PublicKey != a.PublicKey || a.PublicKeys[0].KeyValidityURL != e.URL+"/_matrix/identity/v2/pubkey/isvalid" {
		t.Errorf("public_keys[0] = %+v", a.PublicKeys[0])
	}
	eph := a.PublicKeys[1]
	if eph.PublicKey == a.PublicKey || eph.KeyValidityURL != e.URL+"/_matrix/identity/v2/pubkey/ephemeral/isvalid" {
		t.Errorf("public_keys[1] = %+v", eph)
	}
	for _, pk := range a.PublicKeys {
		status, raw := e.Do(t, http.MethodGet, strings.TrimPrefix(pk.KeyValidityURL, e.URL)+"?public_key="+url.QueryEscape(pk.PublicKey), nil, "")
		if status != 200 || strings.TrimSpace(string(raw)) != `{"valid":true}` {
			t.Errorf("isvalid %s: %d %s", pk.KeyValidityURL, status, raw)
		}
	}

	// The stored record keeps everything, normalised.
	inv, err := e.App.Invites().ByToken(a.Token)
	if err != nil {
		t.Fatal(err)
	}
	if inv.Address != "invitee.person@example.org" || inv.State != invites.StatePending || inv.Sender != alice ||
		inv.RoomName != "Tea & Cake" || inv.RoomAlias != "#tea:hs.test" || inv.Homeserver != "hs.test" ||
		inv.WebClientLocation != "https://evil.example.net/phish" || string(inv.Extra["custom_key"]) != `"kept"` ||
		inv.EphemeralPublic != eph.PublicKey || inv.KeyID != ring.Current().ID || inv.MailID == 0 ||
		inv.ExpiresAt.Sub(inv.Created) != 7*24*time.Hour {
		t.Errorf("stored invite = %+v", inv)
	}

	// The email arrives on the SMTP server.
	p, msgs := e.waitMail(t, 1)
	if got := msgs[0].To; len(got) != 1 || got[0] != "invitee.person@example.org" {
		t.Errorf("envelope to = %v", got)
	}
	if p.Subject != "Alice <A> invited you to Tea & Cake on Matrix" {
		t.Errorf("subject = %q", p.Subject)
	}
	for _, h := range []string{"Date", "Message-Id", "List-Unsubscribe"} {
		if p.Header.Get(h) == "" {
			t.Errorf("header %s missing", h)
		}
	}
	if !strings.Contains(p.HTML, "Alice &lt;A&gt;") || strings.Contains(p.HTML, "Alice <A>") {
		t.Errorf("HTML does not escape the display name")
	}
	if !strings.Contains(p.HTML, "Tea &amp; Cake") {
		t.Errorf("HTML does not escape the room name")
	}
	for _, part := range []string{p.Text, p.HTML} {
		if !strings.Contains(part, "Matrix is an open network") {
			t.Errorf("no line on what Matrix is")
		}
		if strings.Contains(part, "evil.example.net") {
			t.Errorf("link points at the inviter's web client")
		}
	}
	join := findLink(t, p.Text, "https://app.element.io/#/room/")
	u, _ := url.Parse(join)
	frag, _ := url.Parse(u.EscapedFragment())
	q := frag.Query()
	if frag.Path != "/room/!room:hs.test" || q.Get("email") != "invitee.person@example.org" ||
		q.Get("room_name") != "Tea & Cake" || q.Get("inviter_name") != "Alice <A>" {
		t.Errorf("join link %s", join)
	}
	sign, _ := url.Parse(q.Get("signurl"))
	if sign.Scheme+"://"+sign.Host+sign.Path != e.URL+"/_matrix/identity/api/v1/sign-ed25519" ||
		sign.Query().Get("token") != a.Token || sign.Query().Get("private_key") != inv.EphemeralPrivate {
		t.Errorf("signurl %s", sign)
	}
	if !strings.Contains(p.Text, e.URL+"/_herald/invites/decline?token="+a.Token) ||
		!strings.Contains(p.Text, e.URL+"/_herald/invites/optout?token="+a.Token) {
		t.Errorf("decline / opt-out links missing:\n%s", p.Text)
	}
}

func findLink(t testing.TB, text, prefix string) string {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), prefix) {
			return strings.TrimSpace(line)
		}
	}
	t.Fatalf("no link starting %s in:\n%s", prefix, text)
	return ""
}

func TestStoreInviteAllowlistedWebClient(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	body := inviteBody(alice, "x@example.org")
	body["org.matrix.web_client_location"] = "https://chat.example.org/element/"
	e.storeInvite(t, tok, body)
	p, _ := e.waitMail(t, 1)
	findLink(t, p.Text, "https://chat.example.org/element/#/room/")
}

func TestStoreInviteDeduplicates(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	a1 := e.storeInvite(t, tok, inviteBody(alice, "dup@example.org"))
	a2 := e.storeInvite(t, tok, inviteBody(alice, "DUP@example.org"))
	if a1.Token != a2.Token || a1.PublicKeys[1] != a2.PublicKeys[1] {
		t.Errorf("repeat gave a new invite: %+v vs %+v", a1, a2)
	}
	// Another room is another invite.
	other := inviteBody(alice, "dup@example.org")
	other["room_id"] = "!other:hs.test"
	a3 := e.storeInvite(t, tok, other)
	if a3.Token == a1.Token {
		t.Error("another room reused the token")
	}
	// The repeat (within invites.resend_interval) queued nothing: the outbox holds one mail per invite (the
	// outbox is written in store-invite's transaction, so this is exact).
	queued, err := e.App.Mailer().List(mailer.Filter{To: "dup@example.org", Limit: 10})
	if err != nil || len(queued) != 2 || queued[0].Ref == queued[1].Ref {
		t.Fatalf("outbox for the address: %+v %v, want 2 mails for 2 invites", queued, err)
	}
	// Both are sent, and once each: with nothing else queued, no third mail
	// can reach the server.
	for _, m := range queued {
		waitSent(t, e, m.ID)
	}
	if n := len(e.SMTP.Messages()); n != 2 {
		t.Errorf("%d mails sent, want 2", n)
	}
	list, total, err := e.App.Invites().List(invites.Filter{Address: "Dup@Example.org"})
	if err != nil || total != 2 || len(list) != 2 || list[0].Token != a3.Token {
		t.Errorf("List by address: %d %v %v", total, list, err)
	}
	counts, _ := e.App.Invites().Counts()
	if counts[invites.StatePending] != 2 || counts[invites.StateResolved] != 0 {
		t.Errorf("counts = %v", counts)
	}
}

func TestStoreInviteErrors(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{"privacy": {Version: "1", Languages: map[string]config.PolicyLanguage{"en": {Name: "Privacy", URL: "https://herald.test/privacy"}}}}
		c.Invites.Blocklist.Rooms = []string{"!spam:hs.test"}
		c.Invites.Blocklist.Homeservers = []string{"*.spam.test", "other.test"}
		c.Invites.Blocklist.Keywords = []string{"FREE Crypto"}
		c.Invites.EmailDomains.Deny = []string{"denied.example"}
	})
	tok := e.register(t, alice)
	unsigned := e.Register(t, "@carol:hs.test")
	otherTok := e.register(t, "@mallory:other.test")
	e.bind(t, "Bound@Example.org", "@bound:hs.test")

	with := func(k string, v any) map[string]any {
		b := inviteBody(alice, "new@example.org")
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
		return b
	}
	cases := []struct {
		name   string
		token  string
		body   any
		status int
		code   string
	}{
		{"no token", "", inviteBody(alice, "a@example.org"), 401, "M_UNAUTHORIZED"},
		{"bad token", "nope", inviteBody(alice, "a@example.org"), 401, "M_UNAUTHORIZED"},
		{"terms not signed", unsigned, inviteBody("@carol:hs.test", "a@example.org"), 403, "M_TERMS_NOT_SIGNED"},
		{"not JSON", tok, "{", 400, "M_NOT_JSON"},
		{"not an object", tok, "[]", 400, "M_BAD_JSON"},
		{"wrong type", tok, with("room_name", 3), 400, "M_BAD_JSON"},
		{"missing address", tok, with("address", nil), 400, "M_MISSING_PARAMS"},
		{"missing medium", tok, with("medium", nil), 400, "M_MISSING_PARAMS"},
		{"missing room", tok, with("room_id", ""), 400, "M_MISSING_PARAMS"},
		{"missing sender", tok, with("sender", nil), 400, "M_MISSING_PARAMS"},
		{"msisdn", tok, with("medium", "msisdn"), 400, "M_UNRECOGNIZED"},
		{"someone else's sender", tok, with("sender", bob), 403, "M_UNAUTHORIZED"},
		{"bad email", tok, with("address", "not-an-address"), 400, "M_INVALID_EMAIL"},
		{"display name email", tok, with("address", "Eve <eve@example.org>"), 400, "M_INVALID_EMAIL"},
		{"two emails", tok, with("address", "a@example.org, b@example.org"), 400, "M_INVALID_EMAIL"},
		{"long email", tok, with("address", strings.Repeat("a", 65)+"@example.org"), 400, "M_INVALID_EMAIL"},
		{"bad room id", tok, with("room_id", "#alias:hs.test"), 400, "M_INVALID_PARAM"},
		{"bound", tok, with("address", "bound@EXAMPLE.org"), 400, "M_THREEPID_IN_USE"},
		{"blocked room", tok, with("room_id", "!spam:hs.test"), 403, "M_FORBIDDEN"},
		{"blocked keyword", tok, with("room_name", "Get free crypto now"), 403, "M_FORBIDDEN"},
		{"blocked keyword in name", tok, with("sender_display_name", "free CRYPTO"), 403, "M_FORBIDDEN"},
		{"blocked homeserver", otherTok, inviteBody("@mallory:other.test", "a@example.org"), 403, "M_FORBIDDEN"},
		{"denied domain", tok, with("address", "x@denied.example"), 403, "M_FORBIDDEN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", c.body, c.token)
			m := errcode(t, raw)
			if status != c.status || m["errcode"] != c.code {
				t.Errorf("%d %s, want %d %s", status, raw, c.status, c.code)
			}
			if c.code == "M_THREEPID_IN_USE" && m["mxid"] != "@bound:hs.test" {
				t.Errorf("M_THREEPID_IN_USE without mxid: %s", raw)
			}
		})
	}
	if n := len(e.SMTP.Messages()); n != 0 {
		t.Errorf("%d mails sent for refused invites", n)
	}
	if counts, _ := e.App.Invites().Counts(); counts[invites.StatePending] != 0 {
		t.Errorf("refused invites were stored: %v", counts)
	}
}

// Blocklisted keywords are looked for in the room name and the sender's
// display name only: the same word in a URL (avatar, web client) or in the
// room alias does not refuse the invite.
func TestStoreInviteKeywordsNotInURLs(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Invites.Blocklist.Keywords = []string{"casino"} })
	tok := e.register(t, alice)
	body := inviteBody(alice, "k@example.org")
	body["room_avatar_url"] = "mxc://casino.example/avatar"
	body["sender_avatar_url"] = "mxc://casino.example/alice"
	body["org.matrix.web_client_location"] = "https://casino.example/"
	e.storeInvite(t, tok, body)
	for _, key := range []string{"room_name", "sender_display_name"} {
		b := inviteBody(alice, "k2@example.org")
		b[key] = "Big CASINO night"
		status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", b, tok)
		if status != 403 || errcode(t, raw)["errcode"] != "M_FORBIDDEN" {
			t.Errorf("keyword in %s: %d %s", key, status, raw)
		}
	}
}

func TestStoreInviteEmailDomainAllowlist(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Invites.EmailDomains.Allow = []string{"*.corp.example"} })
	tok := e.register(t, alice)
	e.storeInvite(t, tok, inviteBody(alice, "a@corp.example"))
	e.storeInvite(t, tok, inviteBody(alice, "a@eu.corp.example"))
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, "a@gmail.example"), tok)
	if status != 403 || errcode(t, raw)["errcode"] != "M_FORBIDDEN" {
		t.Errorf("%d %s", status, raw)
	}
}

func TestStoreInviteRateLimits(t *testing.T) {
	for _, which := range []string{"sender", "room", "address", "homeserver"} {
		t.Run(which, func(t *testing.T) {
			e := start(t, func(c *config.Config) {
				rl := config.RateLimit{PerHour: 1, Burst: 2}
				switch which {
				case "sender":
					c.Invites.RateLimits.Sender = rl
				case "room":
					c.Invites.RateLimits.Room = rl
				case "address":
					c.Invites.RateLimits.Address = rl
				case "homeserver":
					c.Invites.RateLimits.Homeserver = rl
				}
			})
			tok := e.register(t, alice)
			for i := 0; i < 3; i++ {
				b := inviteBody(alice, "a"+string(rune('0'+i))+"@example.org")
				switch which {
				case "sender", "homeserver":
					b["room_id"] = "!r" + string(rune('0'+i)) + ":hs.test"
				case "room":
				case "address":
					b["address"] = "same@example.org"
					b["room_id"] = "!r" + string(rune('0'+i)) + ":hs.test"
				}
				status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", b, tok)
				if i < 2 && status != 200 {
					t.Fatalf("invite %d: %d %s", i, status, raw)
				}
				if i == 2 {
					m := errcode(t, raw)
					ms, _ := m["retry_after_ms"].(float64)
					if status != 429 || m["errcode"] != "M_LIMIT_EXCEEDED" || ms < 1000 {
						t.Errorf("third invite: %d %s", status, raw)
					}
				}
			}
			// A repeat of a pending invite is answered without using the budget.
			b := inviteBody(alice, "a0@example.org")
			if which != "room" {
				b["room_id"] = "!r0:hs.test"
			}
			if which == "address" {
				b["address"] = "same@example.org"
			}
			if status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", b, tok); status != 200 {
				t.Errorf("repeat: %d %s", status, raw)
			}
		})
	}
}

// TestSignEd25519 covers v2 and the v1 link form, and verifies the answer
// with the ephemeral public key handed out by store-invite.
func TestSignEd25519(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	invitee := e.register(t, "@invitee:hs2.test")
	a := e.storeInvite(t, tok, inviteBody(alice, "inv@example.org"))
	inv, _ := e.App.Invites().ByToken(a.Token)

	check := func(t *testing.T, raw []byte, mxid string) {
		var signed map[string]json.RawMessage
		if err := json.Unmarshal(raw, &signed); err != nil {
			t.Fatal(err)
		}
		var got struct{ MXID, Sender, Token string }
		json.Unmarshal(raw, &got)
		if got.MXID != mxid || got.Sender != alice || got.Token != a.Token {
			t.Errorf("signed = %s", raw)
		}
		pub, _ := keys.DecodeBase64(a.PublicKeys[1].PublicKey)
		if err := keys.VerifyJSON(signed, "herald.test", "ed25519:0", ed25519.PublicKey(pub)); err != nil {
			t.Errorf("signature does not verify with the ephemeral key: %v", err)
		}
	}
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/sign-ed25519",
		map[string]string{"mxid": "@invitee:hs2.test", "token": a.Token, "private_key": inv.EphemeralPrivate}, invitee)
	if status != 200 {
		t.Fatalf("v2: %d %s", status, raw)
	}
	check(t, raw, "@invitee:hs2.test")

	// The link form from the email, as matrix-js-sdk sends it: no body, no auth.
	p, _ := e.waitMail(t, 1)
	join, _ := url.Parse(findLink(t, p.Text, "https://app.element.io/"))
	frag, _ := url.Parse(join.EscapedFragment())
	signurl := frag.Query().Get("signurl") + "&mxid=" + url.QueryEscape("@invitee:hs2.test")
	req, _ := http.NewRequest(http.MethodPost, signurl, nil)
	resp := e.DoRequest(t, req)
	body := readAll(resp)
	if resp.StatusCode != 200 {
		t.Fatalf("v1 link: %d %s", resp.StatusCode, body)
	}
	check(t, body, "@invitee:hs2.test")
	// JSON body on v1 too.
	status, raw = e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/sign-ed25519",
		map[string]string{"mxid": "@x:hs.test", "token": a.Token, "private_key": inv.EphemeralPrivate}, "")
	if status != 200 {
		t.Fatalf("v1 JSON: %d %s", status, raw)
	}
	check(t, raw, "@x:hs.test")

	_, otherPriv := keys.NewEphemeralKey()
	cases := []struct {
		name   string
		body   map[string]string
		token  string
		status int
		code   string
	}{
		{"no auth", map[string]string{"mxid": "@i:hs.test", "token": a.Token, "private_key": inv.EphemeralPrivate}, "", 401, "M_UNAUTHORIZED"},
		{"unknown token", map[string]string{"mxid": "@i:hs.test", "token": "nope", "private_key": inv.EphemeralPrivate}, invitee, 404, "M_UNRECOGNIZED"},
		{"missing mxid", map[string]string{"token": a.Token, "private_key": inv.EphemeralPrivate}, invitee, 400, "M_MISSING_PARAMS"},
		{"bad mxid", map[string]string{"mxid": "invitee", "token": a.Token, "private_key": inv.EphemeralPrivate}, invitee, 400, "M_INVALID_PARAM"},
		{"garbage key", map[string]string{"mxid": "@i:hs.test", "token": a.Token, "private_key": "!!"}, invitee, 400, "M_INVALID_PARAM"},
		{"other key", map[string]string{"mxid": "@i:hs.test", "token": a.Token, "private_key": keys.EncodeBase64(otherPriv.Seed())}, invitee, 403, "M_FORBIDDEN"},
	}
	for _, c := range cases {
		status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/sign-ed25519", c.body, c.token)
		if status != c.status || errcode(t, raw)["errcode"] != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, status, raw, c.status, c.code)
		}
	}

	// A revoked invite is not signed any more and its key is no longer valid.
	db := e.App.Invites().DB()
	if err := db.Update(func(tx *store.Tx) error {
		inv.State = invites.StateRevoked
		return e.App.Invites().Update(tx, inv)
	}); err != nil {
		t.Fatal(err)
	}
	status, raw = e.Do(t, http.MethodPost, "/_matrix/identity/v2/sign-ed25519",
		map[string]string{"mxid": "@invitee:hs2.test", "token": a.Token, "private_key": inv.EphemeralPrivate}, invitee)
	if status != 403 || errcode(t, raw)["errcode"] != "M_FORBIDDEN" {
		t.Errorf("revoked: %d %s", status, raw)
	}
	status, raw = e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(inv.EphemeralPublic), nil, "")
	if status != 200 || strings.TrimSpace(string(raw)) != `{"valid":false}` {
		t.Errorf("ephemeral isvalid after revoke: %d %s", status, raw)
	}
	// And a new invite to the same address from the same room is possible again.
	if b := e.storeInvite(t, tok, inviteBody(alice, "inv@example.org")); b.Token == a.Token {
		t.Error("revoked invite still de-duplicates")
	}
}

// waitSent waits until the outbox records mail id as sent.
func waitSent(t testing.TB, e *env, id uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := e.App.Mailer().Get(id)
		if err == nil && m.State == mailer.Sent {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mail %d never sent: %+v %v", id, m, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The invite, its ephemeral key and its mail are written in one transaction:
// a failure at its very end leaves none of them, and nothing reaches the
// SMTP server before the commit.
func TestStoreInviteIsOneTransaction(t *testing.T) {
	// hook is what store-invite's transaction runs at its end (set below).
	var hook atomic.Pointer[func() error]
	setHook := func(f func() error) { hook.Store(&f) }
	e := startWith(t, server.Options{StoreInviteTxHook: func() error {
		if f := hook.Load(); f != nil && *f != nil {
			return (*f)()
		}
		return nil
	}})
	tok := e.register(t, alice)
	setHook(func() error { return errors.New("injected failure at the end of the transaction") })
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, "atomic@example.org"), tok)
	setHook(nil)
	if status != 500 || errcode(t, raw)["errcode"] != "M_UNKNOWN" || strings.Contains(string(raw), "injected") {
		t.Fatalf("failed transaction: %d %s", status, raw)
	}
	if queued, _ := e.App.Mailer().List(mailer.Filter{}); len(queued) != 0 {
		t.Errorf("mail queued by a rolled-back store-invite: %+v", queued)
	}
	if list, total, _ := e.App.Invites().List(invites.Filter{}); total != 0 {
		t.Errorf("invite stored by a rolled-back store-invite: %+v", list)
	}

	// Committed: all three exist together; at the end of the transaction the
	// SMTP server had not been contacted.
	var connsInTx atomic.Int64
	connsInTx.Store(-1)
	setHook(func() error { connsInTx.Store(int64(e.SMTP.Connections())); return nil })
	a := e.storeInvite(t, tok, inviteBody(alice, "atomic@example.org"))
	setHook(nil)
	if n := connsInTx.Load(); n != 0 {
		t.Errorf("the SMTP server saw %d connections before store-invite committed", n)
	}
	inv, err := e.App.Invites().ByToken(a.Token)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.App.Mailer().Get(inv.MailID)
	if err != nil || m.Ref != fmt.Sprintf("invite:%d", inv.ID) || m.To != "atomic@example.org" {
		t.Errorf("the invite's mail: %+v %v", m, err)
	}
	if ok, err := e.App.Ephemeral().IsValid(inv.EphemeralPublic); !ok || err != nil {
		t.Errorf("the invite's ephemeral key is not valid: %v", err)
	}
	waitSent(t, e, inv.MailID)
	if n := len(e.SMTP.Messages()); n != 1 {
		t.Errorf("%d mails sent, want 1", n)
	}
}
