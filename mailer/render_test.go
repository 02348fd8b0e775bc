package mailer_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

func (e *env) enqueueRendered(m mailer.Message, data []byte) uint64 {
	e.t.Helper()
	p, err := e.q.PrepareRendered(m, data)
	if err != nil {
		e.t.Fatal(err)
	}
	var id uint64
	if err := e.db.Update(func(tx *store.Tx) error {
		id, err = e.q.EnqueuePrepared(tx, p)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	e.q.Wake()
	return id
}

// A mail queued with PrepareRendered stores no message, only its date and
// the owner's few bytes; its kind's Renderer renders it when it is shown
// and sent, and it is composed with the queued recipient, Message-ID and
// date. A Renderer with nothing to send any more cancels the mail without
// sending; another error fails it.
func TestRenderedMailIsRenderedWhenSent(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	queuedAt := time.Date(2026, 11, 29, 23, 1, 2, 0, time.FixedZone("", 3600))
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) { o.Now = func() time.Time { return queuedAt } })
	defer closeDB(t, e.db)

	var renders atomic.Int64
	body := func(ref string, data []byte) mailer.Message {
		return mailer.Message{Subject: "Rendered " + ref, Text: "text of " + ref + " v" + fmt.Sprint(data),
			HTML: "<p>html</p>", Headers: map[string]string{"Auto-Submitted": "auto-generated"}}
	}
	e.q.SetRenderer("invite", func(ref string, data []byte) (mailer.Message, error) {
		renders.Add(1)
		switch ref {
		case "invite:gone":
			return mailer.Message{}, fmt.Errorf("%w: invite gone", mailer.ErrWithdrawn)
		case "invite:broken":
			return mailer.Message{}, errors.New("template exploded")
		}
		return body(ref, data), nil
	})
	if _, err := e.q.PrepareRendered(mailer.Message{To: "a@example.org", Kind: "validation", Subject: "s"}, nil); err == nil {
		t.Error("PrepareRendered of a kind without a Renderer: no error")
	}

	id := e.enqueueRendered(mailer.Message{To: "Alice@Example.org", Kind: "invite", Ref: "invite:7", Subject: "Queued subject"}, []byte{1, 2})
	if n := renders.Load(); n != 0 {
		t.Errorf("rendered %d times while queued", n)
	}
	var stored []byte
	if err := e.db.View(func(tx *store.Tx) error {
		r, err := queue.ReadBolt(tx.Bolt, "outbox", id)
		stored = r.Data
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(stored) > 16 {
		t.Errorf("stored body of %d bytes, want the date and the owner's 2 bytes", len(stored))
	}
	queued, err := e.q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if queued.Subject != "Queued subject" || queued.To != "Alice@Example.org" {
		t.Errorf("listed as %q to %q", queued.Subject, queued.To)
	}
	m := body("invite:7", []byte{1, 2})
	m.To = "Alice@Example.org"
	want, err := mailer.Compose(m, "Herald <herald@id.example.org>", queuedAt, queued.MessageID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(queued.Raw, want) {
		t.Errorf("shown:\n%s\nwant:\n%s", queued.Raw, want)
	}

	gone := e.enqueueRendered(mailer.Message{To: "b@example.org", Kind: "invite", Ref: "invite:gone", Subject: "s"}, nil)
	broken := e.enqueueRendered(mailer.Message{To: "c@example.org", Kind: "invite", Ref: "invite:broken", Subject: "s"}, nil)
	e.run()
	got := srv.WaitFor(1, 10*time.Second)
	if !bytes.Equal(got[0].Data, want) {
		t.Errorf("sent:\n%s\nwant:\n%s", got[0].Data, want)
	}
	e.waitState(id, mailer.Sent)
	g := e.waitState(gone, mailer.Failed)
	if len(g.Attempts) != 0 || !strings.Contains(g.LastError, "invite gone") {
		t.Errorf("withdrawn mail: %d attempts, last error %q", len(g.Attempts), g.LastError)
	}
	b := e.waitState(broken, mailer.Failed)
	if !strings.Contains(b.LastError, "template exploded") {
		t.Errorf("mail that cannot be rendered: last error %q", b.LastError)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d mails reached SMTP, want 1", n)
	}
}
