package mailer_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

func testRaw(t *testing.T, to, subject string) []byte {
	t.Helper()
	raw, err := mailer.Compose(mailer.Message{To: to, Subject: subject, Text: "hello " + subject}, from, fixedDate, mailer.NewMessageID(from))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func sender(srv *smtptest.Server, security string) *mailer.SMTPSender {
	return mailer.NewSMTPSender(mailer.SMTPConfig{
		Host: srv.Host, Port: srv.Port, Security: security,
		Username: "herald", Password: "s3cret",
		InsecureSkipVerify: true, Timeout: 5 * time.Second,
	})
}

func TestSMTPSenderSecurityModes(t *testing.T) {
	for _, sec := range []string{"none", "starttls", "tls"} {
		t.Run(sec, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{Security: sec, Username: "herald", Password: "s3cret", AuthMechanisms: []string{"PLAIN"}})
			s := sender(srv, sec)
			defer s.Close()
			raw := testRaw(t, "alice@example.org", "over "+sec)
			if err := s.Send(context.Background(), "herald@id.example.org", []string{"alice@example.org"}, raw); err != nil {
				t.Fatal(err)
			}
			msgs := srv.Messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages", len(msgs))
			}
			m := msgs[0]
			if m.From != "herald@id.example.org" || len(m.To) != 1 || m.To[0] != "alice@example.org" {
				t.Errorf("envelope %q -> %q", m.From, m.To)
			}
			if m.AuthUser != "herald" {
				t.Errorf("not authenticated (user %q)", m.AuthUser)
			}
			if m.TLS != (sec != "none") {
				t.Errorf("TLS = %v over %s", m.TLS, sec)
			}
			if string(m.Data) != string(raw) {
				t.Errorf("data differs:\n%s", m.Data)
			}
		})
	}
}

func TestSMTPSenderAuthLogin(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{Username: "herald", Password: "s3cret", AuthMechanisms: []string{"LOGIN"}})
	s := sender(srv, "none")
	defer s.Close()
	if err := s.Send(context.Background(), "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "login")); err != nil {
		t.Fatal(err)
	}
	if m := srv.Messages(); len(m) != 1 || m[0].AuthUser != "herald" {
		t.Fatalf("messages = %+v", m)
	}
}

func TestSMTPSenderWrongPasswordIsPermanent(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{Username: "herald", Password: "other"})
	s := sender(srv, "none")
	defer s.Close()
	err := s.Send(context.Background(), "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("err = %v, want 535", err)
	}
	if mailer.Temporary(err) {
		t.Error("535 classified temporary")
	}
}

func TestSMTPSenderStartTLSRequired(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{}) // plain server: no STARTTLS offered
	s := sender(srv, "starttls")
	defer s.Close()
	err := s.Send(context.Background(), "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("err = %v, want a STARTTLS error", err)
	}
	if len(srv.Messages()) != 0 {
		t.Error("mail sent in clear although STARTTLS was required")
	}
}

func TestSMTPSenderReusesConnection(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{Security: "starttls", Username: "herald", Password: "s3cret"})
	s := sender(srv, "starttls")
	defer s.Close()
	ctx := context.Background()
	for i := range 5 {
		if err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "n")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	// A refused message leaves the connection usable.
	srv.Fail(smtptest.AtRcpt, 550, 1)
	if err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "n")); err == nil {
		t.Fatal("RCPT failure not reported")
	}
	if err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "n")); err != nil {
		t.Fatal(err)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("%d connections for 7 sends, want 1", n)
	}
	if n := len(srv.Messages()); n != 6 {
		t.Errorf("%d messages, want 6", n)
	}
}

func TestSMTPSenderReconnectsAfterServerCloses(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second})
	defer s.Close()
	ctx := context.Background()
	for i := range 3 {
		if err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		srv.DropConnections()
	}
	if n := len(srv.Messages()); n != 3 {
		t.Errorf("%d messages, want 3", n)
	}
	if n := srv.Connections(); n != 3 {
		t.Errorf("%d connections, want 3 (one per dropped connection)", n)
	}
}

func TestTemporaryClassification(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&smtp.SMTPError{Code: 421}, true},
		{&smtp.SMTPError{Code: 451}, true},
		{&smtp.SMTPError{Code: 550}, false},
		{&smtp.SMTPError{Code: 554}, false},
		{errors.New("dial tcp: connection refused"), true},
		{&mailer.PermanentError{Err: errors.New("no AUTH")}, false},
	} {
		if got := mailer.Temporary(c.err); got != c.want {
			t.Errorf("Temporary(%v) = %v", c.err, got)
		}
	}
}

// A server that accepts the connection and never answers costs one Timeout,
// not go-smtp's minutes-long defaults, and the failure is retried later.
func TestSMTPSenderTimesOutOnSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, sec := range []string{"none", "starttls", "tls"} {
		s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: port, Security: sec, Timeout: 100 * time.Millisecond})
		// The test's own deadline is far away: only the sender's Timeout can
		// end this Send in time.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
		ctxErr := ctx.Err()
		cancel()
		s.Close()
		if err == nil || ctxErr != nil {
			t.Fatalf("%s: err = %v (ctx %v), want the sender's own timeout", sec, err, ctxErr)
		}
		if !mailer.Temporary(err) {
			t.Errorf("%s: a timeout classified permanent: %v", sec, err)
		}
	}
}

// smtp.connections: the outbox sends over that many connections at once,
// each reused for later mail, and sends every mail once.
func TestQueueSendsOverParallelConnections(t *testing.T) {
	const conns, n = 4, 40
	var mu sync.Mutex
	active, peak := 0, 0
	gate := make(chan struct{})
	srv := smtptest.Start(t, smtptest.Options{OnData: func(int) {
		mu.Lock()
		active++
		peak = max(peak, active)
		mu.Unlock()
		<-gate
		mu.Lock()
		active--
		mu.Unlock()
	}})
	db := openDB(t, t.TempDir())
	defer closeDB(t, db)
	q, err := mailer.Open(db, mailer.Options{
		Sender:      mailer.NewSMTPPool(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second}, conns),
		Connections: conns,
		From:        "Herald <herald@id.example.org>",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, q: q, srv: srv}
	var ids []uint64
	for i := range n {
		ids = append(ids, e.enqueue(msg(fmt.Sprintf("user%d@example.org", i), fmt.Sprint(i))))
	}
	e.run()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		a := active
		mu.Unlock()
		if a == conns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sends under way at once, want %d", a, conns)
		}
		time.Sleep(time.Millisecond)
	}
	close(gate)
	for _, id := range ids {
		e.waitState(id, mailer.Sent)
	}
	if peak != conns || srv.Connections() != conns || len(srv.Messages()) != n {
		t.Fatalf("peak %d sends at once, %d connections, %d messages; want %d, %d, %d", peak, srv.Connections(), len(srv.Messages()), conns, conns, n)
	}
}

// A connection that took a message a moment ago is reused without a NOOP;
// when the server refuses MAIL FROM with 421 (closing, as a server does
// after some number of messages), nothing of the message was sent and it
// goes once more over a new connection. Any other refusal, or a 421 on a
// new connection, is the send's error.
func TestSMTPSenderRetriesMailFromOnAClosingConnection(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second})
	defer s.Close()
	ctx := context.Background()
	send := func() error {
		return s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
	}
	if err := send(); err != nil {
		t.Fatal(err)
	}
	srv.Fail(smtptest.AtMail, 421, 1)
	if err := send(); err != nil {
		t.Fatalf("421 at MAIL FROM on a reused connection: %v", err)
	}
	if n, m := srv.Connections(), len(srv.Messages()); n != 2 || m != 2 {
		t.Errorf("%d connections, %d messages; want 2 and 2", n, m)
	}
	srv.Fail(smtptest.AtMail, 451, 1)
	if err := send(); err == nil || !mailer.Temporary(err) || !strings.Contains(err.Error(), "MAIL FROM: ") {
		t.Errorf("451 at MAIL FROM: %v, want a temporary MAIL FROM error", err)
	}
	srv.DropConnections()
	srv.Fail(smtptest.AtMail, 421, 2)
	if err := send(); err == nil {
		t.Error("421 at MAIL FROM on a new connection: no error")
	}
	if m := len(srv.Messages()); m != 2 {
		t.Errorf("%d messages, want 2", m)
	}
}
