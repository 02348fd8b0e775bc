package invites_test

import (
	"bytes"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
)

// An invite email is stored in the outbox without its body (the invite
// record holds what it shows) and rendered from the invite when it is sent:
// the bytes sent are RenderMail's, composed with the queued Date and
// Message-ID. A mail still queued when the templates change is sent with the
// new ones, and the change is logged.
func TestInviteMailRenderedWhenSent(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	a := e.storeInvite(t, tok, inviteBody(alice, "render@example.org"))
	inv, err := e.App.Invites().ByToken(a.Token)
	if err != nil {
		t.Fatal(err)
	}
	// The outbox record as stored, on either backend.
	var be queue.Backend
	if pg := e.App.DB().PG(); pg != nil {
		be, err = pgqueue.New(pg, "outbox")
	} else {
		be, err = queue.OpenBolt(e.App.DB().Bolt(), "outbox")
	}
	if err != nil {
		t.Fatal(err)
	}
	r, err := be.Get(t.Context(), inv.MailID)
	if err != nil {
		t.Fatal(err)
	}
	stored := r.Data
	if len(stored) > 16 || bytes.Contains(stored, []byte(a.Token)) {
		t.Errorf("queued body of %d bytes: %q", len(stored), stored)
	}
	_, msgs := e.waitMail(t, 1)
	sent := msgs[0].Data
	hdr, err := mail.ReadMessage(bytes.NewReader(sent))
	if err != nil {
		t.Fatal(err)
	}
	date, err := mail.ParseDate(hdr.Header.Get("Date"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.App.Invites().RenderMail(inv)
	if err != nil {
		t.Fatal(err)
	}
	want, err := mailer.Compose(m, e.Config.SMTP.From, date, hdr.Header.Get("Message-ID"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sent, want) {
		t.Errorf("sent:\n%s\nwant:\n%s", sent, want)
	}

	// A second invite waits (the server defers it) while the text template
	// changes and Herald restarts.
	e.SMTP.Fail(smtptest.AtRcpt, 451, -1)
	b := e.storeInvite(t, tok, inviteBody(alice, "later@example.org"))
	later, err := e.App.Invites().ByToken(b.Token)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); e.SMTP.Commands(smtptest.AtRcpt) < 2; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second mail was never tried")
		}
	}
	if strings.Contains(e.Logs(), "sent with the current ones") {
		t.Error("a template change logged before any change")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "invite.txt"), []byte("Changed text: {{.join_url}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.Restart(t, func(c *config.Config) { c.Email.TemplatesDir = dir })
	e.SMTP.Fail(smtptest.AtRcpt, 0, 0)
	e.App.Mailer().Retry(later.MailID)
	p, _ := e.waitMail(t, 2)
	if !strings.Contains(p.Text, "Changed text: https://app.element.io/") || !strings.Contains(p.Text, later.Token) {
		t.Errorf("mail queued before the change, sent after it:\n%s", p.Text)
	}
	if !strings.Contains(e.Logs(), "invite emails queued before a change of the email templates or settings are sent with the current ones") {
		t.Error("the change was not logged")
	}
}
