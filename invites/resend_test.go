package invites_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// outbox lists the mails queued for address, oldest first.
func outbox(t *testing.T, e *env, address string) []mailer.Mail {
	t.Helper()
	list, err := e.App.Mailer().List(mailer.Filter{To: address, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// sentAll waits until every mail queued for address was sent.
func sentAll(t *testing.T, e *env, address string) int {
	t.Helper()
	list := outbox(t, e, address)
	for _, m := range list {
		waitSent(t, e, m.ID)
	}
	return len(list)
}

// The inviter invites again while the invite is pending: same token (the
// room gets no second invite event), and the invitee gets the email again,
// at most once per invites.resend_interval.
func TestRepeatedStoreInviteResendsEmail(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Invites.ResendInterval = config.Duration(time.Hour) })
	tok := e.register(t, alice)
	const addr = "again@example.org"
	a1 := e.storeInvite(t, tok, inviteBody(alice, addr))
	if n := sentAll(t, e, addr); n != 1 {
		t.Fatalf("%d mails after the first invite", n)
	}
	// Within the interval: same answer, no new email.
	a2 := e.storeInvite(t, tok, inviteBody(alice, addr))
	if a2.Token != a1.Token || a2.PublicKeys[1] != a1.PublicKeys[1] {
		t.Fatalf("repeat gave a new invite: %+v vs %+v", a1, a2)
	}
	if n := len(outbox(t, e, addr)); n != 1 {
		t.Fatalf("a repeat within resend_interval queued a mail (%d)", n)
	}
	// After the interval: same token, a second email with the same links.
	e.Clock.Advance(time.Hour + time.Second)
	a3 := e.storeInvite(t, tok, inviteBody(alice, addr))
	if a3.Token != a1.Token {
		t.Fatalf("repeat after the interval changed the token")
	}
	if n := sentAll(t, e, addr); n != 2 {
		t.Fatalf("%d mails after a repeat past the interval, want 2", n)
	}
	p, _ := e.waitMail(t, 2)
	if !strings.Contains(p.Text, a1.Token) {
		t.Fatalf("the second email does not carry the invite's token:\n%s", p.Text)
	}
	inv, _ := e.App.Invites().ByToken(a1.Token)
	if counts, _ := e.App.Invites().Counts(); counts[invites.StatePending] != 1 {
		t.Fatalf("counts %v: a repeat made another invite", counts)
	}
	// The console's resend follows the same rule: too soon now.
	if _, err := e.App.Invites().Resend(inv.ID); !errors.Is(err, invites.ErrResendRefused) {
		t.Fatalf("console resend right after a resend: %v", err)
	}
	e.Clock.Advance(time.Hour + time.Second)
	if _, err := e.App.Invites().Resend(inv.ID); err != nil {
		t.Fatalf("console resend after the interval: %v", err)
	}
	if n := sentAll(t, e, addr); n != 3 {
		t.Fatalf("%d mails after the console's resend, want 3", n)
	}
	// A repeat right after the console's resend sends nothing.
	e.storeInvite(t, tok, inviteBody(alice, addr))
	if n := len(outbox(t, e, addr)); n != 3 {
		t.Fatalf("a repeat right after the console's resend queued a mail (%d)", n)
	}
	// A finished invite is never emailed again: a repeat is a new invite.
	if err := e.App.Invites().Revoke(inv.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.App.Invites().Resend(inv.ID); !errors.Is(err, invites.ErrResendRefused) {
		t.Fatalf("resend of a revoked invite: %v", err)
	}
}

// resend_interval 0 emails on every repeat, but never past the address rate
// limit, and never while the last email is still waiting in the outbox.
func TestRepeatedStoreInviteRateLimited(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.Invites.ResendInterval = 0
		c.Invites.RateLimits.Address = config.RateLimit{PerHour: 1, Burst: 2}
	})
	tok := e.register(t, alice)
	const addr = "limited@example.org"
	a1 := e.storeInvite(t, tok, inviteBody(alice, addr)) // the first of 2
	sentAll(t, e, addr)
	e.storeInvite(t, tok, inviteBody(alice, addr)) // the second: resent at once
	if n := sentAll(t, e, addr); n != 2 {
		t.Fatalf("%d mails, want 2 (resend_interval 0)", n)
	}
	// The address budget is spent: the repeat is still answered, with the
	// same token, and no email is queued.
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, addr), tok)
	if status != http.StatusOK || !strings.Contains(string(raw), a1.Token) {
		t.Fatalf("repeat over the address limit: %d %s", status, raw)
	}
	if n := len(outbox(t, e, addr)); n != 2 {
		t.Fatalf("a repeat over the address rate limit queued a mail (%d)", n)
	}
	if logs := e.Logs(); !strings.Contains(logs, "address rate limit") {
		t.Fatalf("the refusal is not logged")
	}
}

// While the last email is still waiting in the outbox (the SMTP server
// defers it), a repeat queues no second copy.
func TestRepeatedStoreInviteWaitsForQueuedMail(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Invites.ResendInterval = 0 })
	e.SMTP.Fail(smtptest.AtRcpt, 451, -1) // every attempt deferred
	tok := e.register(t, alice)
	const addr = "queued@example.org"
	e.storeInvite(t, tok, inviteBody(alice, addr))
	e.storeInvite(t, tok, inviteBody(alice, addr))
	if list := outbox(t, e, addr); len(list) != 1 {
		t.Fatalf("%d mails queued while the first is still pending", len(list))
	}
}
