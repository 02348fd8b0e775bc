package loadgen

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
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
