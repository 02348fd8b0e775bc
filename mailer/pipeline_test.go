package mailer_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

func rawSender(srv *smtptest.Raw, security string) *mailer.SMTPSender {
	return mailer.NewSMTPSender(mailer.SMTPConfig{
		Host: srv.Host, Port: srv.Port, Security: security,
		InsecureSkipVerify: true, Timeout: 2 * time.Second,
	})
}

// With PIPELINING offered, MAIL FROM, RCPT TO and DATA go out together: the
// server here answers none of them before DATA has arrived, so a sender
// that waits for each reply fails on its Timeout instead. Over each
// security mode, several messages share one connection.
func TestSMTPSenderPipelines(t *testing.T) {
	for _, sec := range []string{"none", "starttls", "tls"} {
		t.Run(sec, func(t *testing.T) {
			srv := smtptest.StartRaw(t, smtptest.RawOptions{Pipelining: true, Security: sec})
			s := rawSender(srv, sec)
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var sent [][]byte
			for i := range 3 {
				raw := testRaw(t, "alice@example.org", "pipelined "+sec)
				reply, err := s.SendReply(ctx, "h@x.org", []string{"alice@example.org", "bob@example.org"}, raw)
				if err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				if want := "250 2.0.0 OK\n2.0.0 queued as " + string(rune('1'+i)); reply != want {
					t.Errorf("reply %q, want %q", reply, want)
				}
				sent = append(sent, raw)
			}
			got := srv.Messages()
			if len(got) != len(sent) {
				t.Fatalf("%d messages, want %d", len(got), len(sent))
			}
			for i := range sent {
				if !bytes.Equal(got[i], sent[i]) {
					t.Errorf("message %d differs:\n%s", i, got[i])
				}
			}
			if n := srv.Connections(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

// Refusals at each command give the same errors, classes and outcome with
// and without pipelining, and the next message on the same sender goes
// through. Without PIPELINING the sender never sends a command before the
// previous one was answered, and the MAIL FROM lines are the same.
func TestSMTPSenderPipelinedRefusals(t *testing.T) {
	for _, c := range []struct {
		name    string
		verb    string
		replies []string
		to      []string
		prefix  string // of the error; "" for no error
		class   string
		msgs    int // delivered in all, with the messages before and after
	}{
		{name: "accepted", prefix: "", class: "2xx", msgs: 3},
		{name: "SMTPUTF8", to: []string{"jörg@example.org"}, class: "2xx", msgs: 3},
		{name: "MAIL 451", verb: "MAIL", replies: []string{"451 4.3.0 try later"}, prefix: "MAIL FROM: ", class: "4xx", msgs: 2},
		{name: "MAIL 550", verb: "MAIL", replies: []string{"550 5.7.1 sender refused"}, prefix: "MAIL FROM: ", class: "5xx", msgs: 2},
		// A reused connection closing at MAIL FROM: sent again over a new one.
		{name: "MAIL 421", verb: "MAIL", replies: []string{"421 4.3.2 closing"}, class: "2xx", msgs: 3},
		{name: "one RCPT of two", verb: "RCPT", replies: []string{"550 5.1.1 no such user"}, to: []string{"a@example.org", "b@example.org"}, prefix: "RCPT TO: ", class: "5xx", msgs: 2},
		{name: "second RCPT of two", verb: "RCPT", replies: []string{"250 2.1.5 OK", "450 4.2.1 mailbox busy"}, to: []string{"a@example.org", "b@example.org"}, prefix: "RCPT TO: ", class: "4xx", msgs: 2},
		{name: "every RCPT", verb: "RCPT", replies: []string{"550 5.1.1 no such user", "550 5.1.1 no such user"}, to: []string{"a@example.org", "b@example.org"}, prefix: "RCPT TO: ", class: "5xx", msgs: 2},
		{name: "the only RCPT", verb: "RCPT", replies: []string{"550 5.1.1 no such user"}, prefix: "RCPT TO: ", class: "5xx", msgs: 2},
		{name: "RCPT 421", verb: "RCPT", replies: []string{"421 4.3.2 closing"}, prefix: "RCPT TO: ", class: "4xx", msgs: 2},
		{name: "DATA 451", verb: "DATA", replies: []string{"451 4.3.0 no room"}, prefix: "DATA: ", class: "4xx", msgs: 2},
		{name: "DATA 554", verb: "DATA", replies: []string{"554 5.3.4 not now"}, prefix: "DATA: ", class: "5xx", msgs: 2},
		{name: "DATA 421", verb: "DATA", replies: []string{"421 4.3.2 closing"}, prefix: "DATA: ", class: "4xx", msgs: 2},
		{name: "end of DATA 451", verb: ".", replies: []string{"451 4.3.0 try again"}, prefix: "end of DATA: ", class: "4xx", msgs: 2},
		{name: "end of DATA 554", verb: ".", replies: []string{"554 5.7.1 looks like spam"}, prefix: "end of DATA: ", class: "5xx", msgs: 2},
		{name: "end of DATA 421", verb: ".", replies: []string{"421 4.3.2 closing"}, prefix: "end of DATA: ", class: "4xx", msgs: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			type outcome struct {
				err, class string
				reply      string
				temporary  bool
				msgs       int
				mail       []string
			}
			run := func(pipelining bool) outcome {
				srv := smtptest.StartRaw(t, smtptest.RawOptions{Pipelining: pipelining, SMTPUTF8: true})
				s := rawSender(srv, "none")
				defer s.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				good := func(when string) {
					t.Helper()
					if err := s.Send(ctx, "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", when)); err != nil {
						t.Fatalf("pipelining %v: message %s: %v", pipelining, when, err)
					}
				}
				good("before")
				srv.Reply(c.verb, c.replies...)
				to := c.to
				if to == nil {
					to = []string{"a@example.org"}
				}
				reply, err := s.SendReply(ctx, "h@x.org", to, testRaw(t, to[0], "scripted"))
				// Without pipelining, replies meant for commands after a
				// refusal are not used.
				srv.Reply(c.verb)
				good("after")
				o := outcome{reply: reply, class: mailer.ReplyClass(err), temporary: err != nil && mailer.Temporary(err), msgs: len(srv.Messages())}
				if err != nil {
					o.err = err.Error()
				}
				for _, l := range srv.Commands() {
					if strings.HasPrefix(l, "MAIL") {
						o.mail = append(o.mail, l)
					}
				}
				if !pipelining && srv.Pipelined() != 0 {
					t.Errorf("%d commands pipelined to a server without PIPELINING", srv.Pipelined())
				}
				return o
			}
			p, q := run(true), run(false)
			if p.reply != q.reply {
				t.Errorf("reply pipelined %q, not %q", p.reply, q.reply)
			}
			if p.err != q.err || p.class != q.class || p.temporary != q.temporary {
				t.Errorf("pipelined: %q (%s, temporary %v); not: %q (%s, temporary %v)", p.err, p.class, p.temporary, q.err, q.class, q.temporary)
			}
			if c.prefix == "" && p.err != "" || !strings.HasPrefix(p.err, c.prefix) || p.class != c.class {
				t.Errorf("error %q (%s), want prefix %q (%s)", p.err, p.class, c.prefix, c.class)
			}
			if c.class != "2xx" && p.temporary != (c.class == "4xx") {
				t.Errorf("%s refusal classified temporary=%v", c.class, p.temporary)
			}
			if p.msgs != c.msgs || q.msgs != c.msgs {
				t.Errorf("%d messages pipelined, %d not; want %d", p.msgs, q.msgs, c.msgs)
			}
			if strings.Join(p.mail, "|") != strings.Join(q.mail, "|") {
				t.Errorf("MAIL FROM lines differ:\npipelined %q\nnot       %q", p.mail, q.mail)
			}
		})
	}
}

// scriptedServer accepts one connection on loopback and hands it to serve
// after the greeting.
func scriptedServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "220 scripted ESMTP\r\n")
		serve(c, bufio.NewReader(c))
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).Port
}

// readUntil reads lines until one equals line (CRLF dropped).
func readUntil(br *bufio.Reader, line string) bool {
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return false
		}
		if strings.TrimRight(l, "\r\n") == line {
			return true
		}
	}
}

// A pipelined message whose final reply never comes fails after twice the
// Timeout, as on the go-smtp path, and is retried later.
func TestSMTPSenderPipelinedTimeout(t *testing.T) {
	release := make(chan struct{})
	port := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
		if !readUntil(br, "EHLO localhost") {
			return
		}
		io.WriteString(c, "250-scripted\r\n250 PIPELINING\r\n")
		if !readUntil(br, "DATA") {
			return
		}
		io.WriteString(c, "250 OK\r\n250 OK\r\n354 go ahead\r\n")
		if readUntil(br, ".") {
			<-release // no reply to the end of data
		}
	})
	defer close(release)
	const timeout = 300 * time.Millisecond
	s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: port, Security: "none", HeloName: "localhost", Timeout: timeout})
	defer s.Close()
	start := time.Now()
	err := s.Send(context.Background(), "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.HasPrefix(err.Error(), "end of DATA: ") || !mailer.Temporary(err) {
		t.Fatalf("err = %v, want a temporary end of DATA timeout", err)
	}
	if d := time.Since(start); d < 2*timeout || d > 5*time.Second {
		t.Errorf("timed out after %v, want about %v", d, 2*timeout)
	}
}

// Bytes a server sends after its reply to STARTTLS, before TLS, must not
// be read as replies after it (a plaintext injection): the connection is
// refused.
func TestSMTPSenderRefusesDataAfterStartTLSReply(t *testing.T) {
	port := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
		if !readUntil(br, "EHLO localhost") {
			return
		}
		io.WriteString(c, "250-scripted\r\n250 STARTTLS\r\n")
		if readUntil(br, "STARTTLS") {
			io.WriteString(c, "220 go ahead\r\n250 injected\r\n")
			br.ReadByte() // until the client hangs up
		}
	})
	s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: port, Security: "starttls", HeloName: "localhost", InsecureSkipVerify: true, Timeout: 5 * time.Second})
	defer s.Close()
	err := s.Send(context.Background(), "h@x.org", []string{"a@example.org"}, testRaw(t, "a@example.org", "x"))
	if err == nil || !strings.Contains(err.Error(), "STARTTLS: the server sent more than its reply to STARTTLS") {
		t.Fatalf("err = %v, want the STARTTLS injection refused", err)
	}
}
