package mailer_test

import (
	"strings"
	"testing"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// A non-ASCII domain goes to SMTP as IDNA (punycode), in the envelope and in
// the To header, with or without SMTPUTF8: before, the raw UTF-8 domain went
// to servers that cannot take it.
func TestIDNDomainSentAsPunycode(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(mailer.Message{To: "x@münchen.de", Subject: "IDN", Text: "hello"})
	m := e.waitState(id, mailer.Sent)
	if m.To != "x@münchen.de" {
		t.Errorf("stored recipient %q", m.To)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || len(msgs[0].To) != 1 || msgs[0].To[0] != "x@xn--mnchen-3ya.de" || msgs[0].UTF8 {
		t.Fatalf("envelope: %+v", msgs)
	}
	p, err := mailer.Parse(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if p.Header.Get("To") != "<x@xn--mnchen-3ya.de>" {
		t.Errorf("To header %q", p.Header.Get("To"))
	}
}

// A non-ASCII local part travels with SMTPUTF8 when the server offers it.
func TestUTF8LocalPartUsesSMTPUTF8(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{SMTPUTF8: true})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(mailer.Message{To: "jörg@münchen.de", Subject: "UTF-8", Text: "hello"})
	e.waitState(id, mailer.Sent)
	msgs := srv.Messages()
	if len(msgs) != 1 || !msgs[0].UTF8 || msgs[0].To[0] != "jörg@xn--mnchen-3ya.de" {
		t.Fatalf("want one SMTPUTF8 message to jörg@xn--mnchen-3ya.de, got %+v", msgs)
	}
	// ASCII mail on the same server does not ask for SMTPUTF8.
	id = e.enqueue(mailer.Message{To: "plain@example.org", Subject: "ASCII", Text: "hello"})
	e.waitState(id, mailer.Sent)
	if msgs := srv.Messages(); len(msgs) != 2 || msgs[1].UTF8 {
		t.Fatalf("ASCII mail asked for SMTPUTF8: %+v", msgs)
	}
}

// Without SMTPUTF8 at the server, a non-ASCII local part cannot be sent at
// all: the mail fails at once (no retries) with that reason recorded, and the
// connection stays usable for the next mail.
func TestUTF8LocalPartWithoutSMTPUTF8Fails(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(mailer.Message{To: "jörg@example.org", Subject: "UTF-8", Text: "hello"})
	m := e.waitState(id, mailer.Failed)
	if len(m.Attempts) != 1 || m.Attempts[0].Temporary || !strings.Contains(m.Attempts[0].Reply, "SMTPUTF8") {
		t.Fatalf("attempts %+v, want one permanent failure naming SMTPUTF8", m.Attempts)
	}
	if srv.Commands(smtptest.AtMail) != 0 {
		t.Errorf("MAIL was sent for an address the server cannot take")
	}
	id = e.enqueue(mailer.Message{To: "plain@example.org", Subject: "ASCII", Text: "hello"})
	e.waitState(id, mailer.Sent)
	if srv.Connections() != 1 {
		t.Errorf("%d connections, want 1 (the refusal must not drop it)", srv.Connections())
	}
}
