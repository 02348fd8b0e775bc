package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/herald-im/herald/mailer"
)

// The benchmark's SMTP sink takes messages from a real SMTP client (go-smtp,
// as Herald's mailer sends) over one connection: recipients and bytes as
// sent, dot-stuffing undone, a line longer than its read buffer kept whole.
func TestSMTPSinkAcceptsWhatAClientSends(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		to  []string
		raw []byte
	}
	var mu sync.Mutex
	var msgs []got
	s := &smtpSink{deliver: func(to []string, raw []byte) {
		mu.Lock()
		msgs = append(msgs, got{to, raw})
		mu.Unlock()
	}}
	go s.serve(ln)
	defer s.close()

	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 100<<10)
	bodies := []string{
		"Subject: one\r\n\r\nhello\r\n.starts with a dot\r\n..two dots\r\n",
		"Subject: two\r\n\r\n" + long + "\r\n.after a long line\r\n",
	}
	for i, body := range bodies {
		if err := c.SendMail("from@x.test", []string{"A@Example.org", "b@example.org"}, strings.NewReader(body)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(msgs) != len(bodies) {
		t.Fatalf("%d messages received, want %d", len(msgs), len(bodies))
	}
	for i, m := range msgs {
		if strings.Join(m.to, ",") != "a@example.org,b@example.org" {
			t.Errorf("message %d to %v", i, m.to)
		}
		if !bytes.Equal(m.raw, []byte(bodies[i])) {
			t.Errorf("message %d: %d bytes received, want %d: %.80q", i, len(m.raw), len(bodies[i]), m.raw)
		}
	}
}

// The sink offers PIPELINING: MAIL, RCPT and DATA written at once are
// answered together, 354 included, before the client sends the body; a
// refused DATA (no recipient) in a group is answered too, and Herald's own
// sender, which pipelines when offered, delivers through it.
func TestSMTPSinkPipelining(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got [][]string
	var bodies []string
	s := &smtpSink{deliver: func(to []string, raw []byte) {
		mu.Lock()
		got = append(got, to)
		bodies = append(bodies, string(raw))
		mu.Unlock()
	}}
	go s.serve(ln)
	defer s.close()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := textproto.NewReader(bufio.NewReader(c))
	expect := func(code int) string {
		t.Helper()
		_, msg, err := r.ReadResponse(code)
		if err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
		return msg
	}
	write := func(s string) {
		t.Helper()
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	expect(220)
	write("EHLO client.test\r\n")
	if ext := expect(250); !strings.Contains(ext, "\nPIPELINING") {
		t.Fatalf("EHLO reply %q offers no PIPELINING", ext)
	}
	// One write: the 354 must come without anything more from the client.
	write("MAIL FROM:<f@x.test>\r\nRCPT TO:<A@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
	expect(250)
	expect(25)
	expect(25)
	expect(354)
	write("Subject: p\r\n\r\n..dot\r\n.\r\n")
	expect(250)
	// A group whose DATA has no recipient before it.
	write("RSET\r\nMAIL FROM:<f@x.test>\r\nDATA\r\nNOOP\r\n")
	expect(250)
	expect(250)
	if _, _, err := r.ReadResponse(354); err == nil {
		t.Fatal("DATA without RCPT accepted")
	}
	expect(250)

	snd := mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port, Security: "none", Timeout: 5 * time.Second})
	defer snd.Close()
	for i := range 3 {
		if err := snd.Send(context.Background(), "f@x.test", []string{"c@x.test"}, []byte("Subject: s\r\n\r\nbody\r\n")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 || strings.Join(got[0], ",") != "a@x.test,b@x.test" || bodies[0] != "Subject: p\r\n\r\n.dot\r\n" || bodies[3] != "Subject: s\r\n\r\nbody\r\n" {
		t.Fatalf("delivered %q %q", got, bodies)
	}
}
