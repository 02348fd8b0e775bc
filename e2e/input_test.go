package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

const reqTokenV1Path = "/_matrix/identity/api/v1/validate/email/requestToken"

// queuedTo counts the mails ever queued to address (any state): requestToken
// queues its mail in the request's transaction, so this is exact at once.
func queuedTo(t *testing.T, w *world, address string) int {
	t.Helper()
	ms, err := w.env.App.Mailer().List(mailer.Filter{To: address, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

func expectLimited(t *testing.T, what string, status int, body []byte) {
	t.Helper()
	if status != http.StatusTooManyRequests || errcode(body) != "M_LIMIT_EXCEEDED" || !strings.Contains(string(body), `"retry_after_ms":`) {
		t.Fatalf("%s: %d %s, want 429 M_LIMIT_EXCEEDED with retry_after_ms", what, status, body)
	}
}

// The attack: one account asked for 60 validation mails to one address in a
// few seconds, and all 60 were sent. With the default limits a handful go
// out; the rest are refused with 429 M_LIMIT_EXCEEDED and retry_after_ms, and
// the address can be mailed again once the hour has refilled its bucket.
func TestRequestTokenEmailBombing(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)
	const victim = "victim@example.org"
	def := config.Default().Validation.RateLimits
	sent, limited := 0, 0
	for i := range 60 {
		status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{
			"client_secret": fmt.Sprintf("bomb%d", i), "email": victim, "send_attempt": 1,
		}, tok)
		switch status {
		case http.StatusOK:
			sent++
		default:
			expectLimited(t, "request "+fmt.Sprint(i), status, body)
			limited++
		}
	}
	if sent != def.Address.Burst || limited != 60-def.Address.Burst {
		t.Fatalf("%d requests accepted, %d limited; want %d accepted", sent, limited, def.Address.Burst)
	}
	if n := queuedTo(t, w, victim); n != def.Address.Burst {
		t.Fatalf("%d validation mails queued to the victim, want %d", n, def.Address.Burst)
	}
	waitMail(t, w.smtp, victim, "Confirm", def.Address.Burst-1)

	// An hour later the address's bucket has refilled.
	w.env.Clock.Advance(time.Hour)
	status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "later", "email": victim, "send_attempt": 1}, tok)
	if status != http.StatusOK {
		t.Fatalf("after an hour: %d %s", status, body)
	}
}

// Repeating a request (same client_secret, email and send_attempt) sends
// nothing, so it must not use up the address's allowance.
func TestRequestTokenRepeatsAreFree(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)
	const addr = "repeat@example.org"
	req := map[string]any{"client_secret": "same", "email": addr, "send_attempt": 1}
	for i := range 20 {
		if status, body := w.env.Do(t, "POST", reqTokenPath, req, tok); status != http.StatusOK {
			t.Fatalf("repeat %d: %d %s", i, status, body)
		}
	}
	if n := queuedTo(t, w, addr); n != 1 {
		t.Fatalf("%d mails for 20 identical requests, want 1", n)
	}
	burst := config.Default().Validation.RateLimits.Address.Burst
	for i := 1; i < burst; i++ {
		req["send_attempt"] = i + 1 // a new attempt is a new mail
		if status, body := w.env.Do(t, "POST", reqTokenPath, req, tok); status != http.StatusOK {
			t.Fatalf("attempt %d: %d %s", i+1, status, body)
		}
	}
	req["send_attempt"] = burst + 1
	status, body := w.env.Do(t, "POST", reqTokenPath, req, tok)
	expectLimited(t, "one attempt over the burst", status, body)
	// The refused attempt did not advance the session: repeating the last
	// accepted attempt still answers, and sends nothing.
	req["send_attempt"] = burst
	if status, body := w.env.Do(t, "POST", reqTokenPath, req, tok); status != http.StatusOK {
		t.Fatalf("repeat of the last attempt: %d %s", status, body)
	}
	if n := queuedTo(t, w, addr); n != burst {
		t.Fatalf("%d mails queued, want %d", n, burst)
	}
}

// One account spreading validation mails over many addresses is limited
// per account.
func TestRequestTokenPerAccountLimit(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)
	other := w.env.Register(t, "@bob:hs.test")
	burst := config.Default().Validation.RateLimits.Account.Burst
	for i := range burst {
		status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "s", "email": fmt.Sprintf("a%d@example.org", i), "send_attempt": 1}, tok)
		if status != http.StatusOK {
			t.Fatalf("mail %d: %d %s", i, status, body)
		}
	}
	status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "s", "email": "one-more@example.org", "send_attempt": 1}, tok)
	expectLimited(t, "account over its burst", status, body)
	// Another account is not affected.
	if status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "s", "email": "one-more@example.org", "send_attempt": 1}, other); status != http.StatusOK {
		t.Fatalf("other account: %d %s", status, body)
	}
}

// The v1 requestToken is anonymous: it is limited per client IP, and a
// forged X-Forwarded-For does not make a client someone else.
func TestRequestTokenV1PerClientIP(t *testing.T) {
	w := start(t, hssim.Synapse, func(c *config.Config) { c.Compat.V1 = true })
	burst := config.Default().Validation.RateLimits.ClientIP.Burst
	post := func(i int) (int, []byte) {
		req, err := http.NewRequest("POST", w.env.URL+reqTokenV1Path, strings.NewReader(
			fmt.Sprintf(`{"client_secret":"s","email":"v1-%d@example.org","send_attempt":1}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("203.0.113.%d", i))
		req.Header.Set("X-Real-Ip", fmt.Sprintf("198.51.100.%d", i))
		resp := w.env.DoRequest(t, req)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	for i := range burst {
		if status, body := post(i); status != http.StatusOK {
			t.Fatalf("mail %d: %d %s", i, status, body)
		}
	}
	status, body := post(burst)
	expectLimited(t, "client over its burst", status, body)
}

// Addresses with invisible or bidi characters are refused before any mail.
func TestRequestTokenRefusesInvisibleCharacters(t *testing.T) {
	w := start(t, hssim.Synapse)
	tok := w.env.Register(t, alice)
	for _, addr := range []string{"a\u200b@example.org", "\u202egro.elpmaxe@a", "a@exam\u2060ple.org", "\ufffd@example.org"} {
		status, body := w.env.Do(t, "POST", reqTokenPath, map[string]any{"client_secret": "s", "email": addr, "send_attempt": 1}, tok)
		expectErr(t, status, body, 400, "M_INVALID_EMAIL")
	}
	status, body := w.env.Do(t, "POST", reqTokenPath, `{"client_secret":"s","email":"a`+"\xff"+`@example.org","send_attempt":1}`, tok)
	expectErr(t, status, body, 400, "M_INVALID_EMAIL")
	if st, err := w.env.App.Mailer().Stats(); err != nil || st.Pending+st.Sent+st.Failed != 0 {
		t.Fatalf("mails queued for refused addresses: %+v %v", st, err)
	}
}

// The same flood against the built binary, as an attacker would send it:
// anonymous v1 requestTokens to many addresses from one client, each with a
// forged X-Forwarded-For. The binary sends the default burst of validation
// mails for that client and answers the rest 429 M_LIMIT_EXCEEDED.
func TestBinaryRequestTokenFlood(t *testing.T) {
	h, smtp, _, _ := newBinary(t, "", "compat:\n  v1: true\n")
	h.start(t)
	defer h.stop(t)
	burst := config.Default().Validation.RateLimits.ClientIP.Burst
	ok := 0
	for i := range 3 * burst {
		req, err := http.NewRequest("POST", h.url+reqTokenV1Path, strings.NewReader(
			fmt.Sprintf(`{"client_secret":"s","email":"flood%d@example.org","send_attempt":1}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("192.0.2.%d", i+1))
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			ok++
			continue
		}
		expectLimited(t, fmt.Sprint("request ", i), resp.StatusCode, body)
	}
	if ok != burst {
		t.Fatalf("%d validation mails accepted from one client, want %d", ok, burst)
	}
	if got := len(smtp.WaitFor(burst, 10*time.Second)); got != burst {
		t.Fatalf("%d mails arrived, want %d", got, burst)
	}
}

// Through the whole stack: an invite to an address with a non-ASCII local
// part (a valid address, stored with its domain normalised) goes out with
// SMTPUTF8 and a punycode domain where the server offers SMTPUTF8, and fails
// once, with that reason recorded, where it does not.
func TestInviteToUTF8AddressAndSMTPUTF8(t *testing.T) {
	for _, offered := range []bool{true, false} {
		t.Run(fmt.Sprint("smtputf8=", offered), func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{SMTPUTF8: offered})
			env := testenv.Start(t, func(c *config.Config) {
				c.SMTP.Host, c.SMTP.Port = srv.Host, srv.Port
			})
			tok := env.Register(t, alice)
			status, body := env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
				"medium": "email", "address": "Jörg@MÜNCHEN.de", "room_id": "!utf8:hs.test", "sender": alice,
			}, tok)
			if status != http.StatusOK {
				t.Fatalf("store-invite: %d %s", status, body)
			}
			var m mailer.Mail
			waitFor(t, "the invite mail to be sent or fail", func() bool {
				ms, err := env.App.Mailer().List(mailer.Filter{To: "jörg@münchen.de"})
				if err != nil || len(ms) != 1 {
					return false
				}
				m = ms[0]
				return m.State != mailer.Pending
			})
			if offered {
				msgs := srv.Messages()
				if m.State != mailer.Sent || len(msgs) != 1 || !msgs[0].UTF8 || msgs[0].To[0] != "jörg@xn--mnchen-3ya.de" {
					t.Fatalf("state %s, messages %+v; want one SMTPUTF8 message to jörg@xn--mnchen-3ya.de", m.State, msgs)
				}
				return
			}
			if m.State != mailer.Failed || len(m.Attempts) != 1 || !strings.Contains(m.Attempts[0].Reply, "SMTPUTF8") {
				t.Fatalf("state %s, attempts %+v; want failed once, naming SMTPUTF8", m.State, m.Attempts)
			}
			if n := len(srv.Messages()); n != 0 {
				t.Fatalf("%d messages reached the server", n)
			}
		})
	}
}
