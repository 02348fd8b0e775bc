package smtptest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RawOptions configure a Raw server.
type RawOptions struct {
	// Pipelining offers PIPELINING (RFC 2920) and answers MAIL FROM and
	// RCPT TO only once DATA has arrived: a client that waits for each
	// reply before the next command waits forever. Without it, PIPELINING
	// is not offered and a command that arrives before the previous one
	// was answered is counted (Pipelined).
	Pipelining bool
	// Security: "none" (default), "starttls" or "tls", with a self-signed
	// certificate.
	Security string
	// SMTPUTF8 offers SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// CountOnly keeps neither messages nor commands, only their number
	// (Delivered): for benchmarks sending many.
	CountOnly bool
}

// Raw is a small hand-written SMTP server for tests of how a client
// orders its commands, which go-smtp's server (Server) cannot show: it
// answers each command as it reads it. Replies can be scripted per
// command (Reply); everything else is accepted. No AUTH.
type Raw struct {
	Host string // "127.0.0.1"
	Port int

	opts RawOptions
	tls  *tls.Config

	mu        sync.Mutex
	replies   map[string][]string
	msgs      [][]byte
	delivered int
	commands  []string
	conns     int
	pipelined int
}

// StartRaw starts a Raw server and stops it when the test ends.
func StartRaw(t testing.TB, opts RawOptions) *Raw {
	t.Helper()
	if opts.Security == "" {
		opts.Security = "none"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	r := &Raw{opts: opts, replies: map[string][]string{}}
	if opts.Security != "none" {
		r.tls = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	}
	r.Host = "127.0.0.1"
	r.Port = ln.Addr().(*net.TCPAddr).Port
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns++
			r.mu.Unlock()
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.session(c)
				c.Close()
				mu.Lock()
				delete(open, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}

// Reply makes the next len(replies) commands with this verb ("MAIL",
// "RCPT", "DATA", or "." for the end of a message) get these replies
// (e.g. "550 5.1.1 no such user") instead of being accepted, replacing
// those not used yet. A reply starting with 421 closes the connection
// after it is sent.
func (r *Raw) Reply(verb string, replies ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replies[verb] = append([]string(nil), replies...)
}

// Messages returns the messages accepted so far, dot-stuffing undone.
func (r *Raw) Messages() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.msgs...)
}

// Delivered counts the messages accepted so far.
func (r *Raw) Delivered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delivered
}

// Commands returns every command line received so far, in order.
func (r *Raw) Commands() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.commands...)
}

// Connections counts the connections accepted so far.
func (r *Raw) Connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns
}

// Pipelined counts, on a server without PIPELINING, the commands that
// arrived before the previous one was answered.
func (r *Raw) Pipelined() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pipelined
}

// scripted returns the scripted reply for verb, or def.
func (r *Raw) scripted(verb, def string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q := r.replies[verb]; len(q) > 0 {
		r.replies[verb] = q[1:]
		return q[0]
	}
	return def
}

func (r *Raw) session(c net.Conn) {
	if r.opts.Security == "tls" {
		c = tls.Server(c, r.tls)
	}
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	// send writes replies in one write; false: stop (write error, or 421).
	send := func(lines ...string) bool {
		for _, l := range lines {
			bw.WriteString(l + "\r\n")
		}
		return bw.Flush() == nil && !strings.HasPrefix(lines[len(lines)-1], "421")
	}
	if !send("220 raw.smtptest ESMTP") {
		return
	}
	var pending []string // MAIL, RCPT and DATA not answered yet
	mailOK, rcptOK := false, 0
	for {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		verb, _, _ := strings.Cut(strings.ToUpper(cmd), " ")
		verb, _, _ = strings.Cut(verb, ":")
		r.mu.Lock()
		if !r.opts.CountOnly {
			r.commands = append(r.commands, cmd)
		}
		if !r.opts.Pipelining && br.Buffered() > 0 {
			r.pipelined++
		}
		r.mu.Unlock()
		switch verb {
		case "EHLO":
			ext := []string{"250-raw.smtptest", "250-8BITMIME", "250-ENHANCEDSTATUSCODES"}
			if r.opts.Pipelining {
				ext = append(ext, "250-PIPELINING")
			}
			if r.opts.SMTPUTF8 {
				ext = append(ext, "250-SMTPUTF8")
			}
			if _, isTLS := c.(*tls.Conn); r.opts.Security == "starttls" && !isTLS {
				ext = append(ext, "250-STARTTLS")
			}
			ext[len(ext)-1] = "250 " + ext[len(ext)-1][4:]
			if !send(ext...) {
				return
			}
		case "STARTTLS":
			if _, isTLS := c.(*tls.Conn); r.opts.Security != "starttls" || isTLS {
				if !send("502 5.5.1 no STARTTLS here") {
					return
				}
				continue
			}
			if !send("220 2.0.0 go ahead") {
				return
			}
			c = tls.Server(c, r.tls)
			br, bw = bufio.NewReader(c), bufio.NewWriter(c)
			pending, mailOK, rcptOK = nil, false, 0
		case "MAIL", "RCPT", "DATA":
			pending = append(pending, verb)
			if r.opts.Pipelining && verb != "DATA" {
				continue
			}
			var out []string
			dataOK := false
			for _, v := range pending {
				var rep string
				switch v {
				case "MAIL":
					rep = r.scripted(v, "250 2.1.0 OK")
					mailOK, rcptOK = strings.HasPrefix(rep, "250"), 0
				case "RCPT":
					rep = "503 5.5.1 MAIL first"
					if mailOK {
						rep = r.scripted(v, "250 2.1.5 OK")
					}
					if strings.HasPrefix(rep, "250") {
						rcptOK++
					}
				case "DATA":
					rep = "554 5.5.1 no valid recipients"
					if mailOK && rcptOK > 0 {
						rep = r.scripted(v, "354 go ahead")
					}
					dataOK = strings.HasPrefix(rep, "354")
				}
				out = append(out, rep)
				if strings.HasPrefix(rep, "421") {
					break
				}
			}
			pending = nil
			if !send(out...) {
				return
			}
			if !dataOK {
				continue
			}
			mailOK, rcptOK = false, 0
			msg, ok := readMessage(br)
			if !ok {
				return
			}
			rep := r.scripted(".", "")
			if rep == "" {
				r.mu.Lock()
				if !r.opts.CountOnly {
					r.msgs = append(r.msgs, msg)
				}
				r.delivered++
				n := r.delivered
				r.mu.Unlock()
				// A reply of two lines, as some servers give.
				if !send("250-2.0.0 OK", "250 2.0.0 queued as "+strconv.Itoa(n)) {
					return
				}
				continue
			}
			if !send(rep) {
				return
			}
		case "RSET":
			pending, mailOK, rcptOK = nil, false, 0
			if !send("250 2.0.0 OK") {
				return
			}
		case "NOOP":
			if !send("250 2.0.0 OK") {
				return
			}
		case "QUIT":
			send("221 2.0.0 bye")
			return
		default:
			if !send("502 5.5.2 not implemented") {
				return
			}
		}
	}
}

// readMessage reads a message up to its final dot, undoing dot-stuffing.
func readMessage(br *bufio.Reader) ([]byte, bool) {
	var msg bytes.Buffer
	for {
		l, err := br.ReadBytes('\n')
		if err != nil {
			return nil, false
		}
		if string(l) == ".\r\n" {
			return msg.Bytes(), true
		}
		if l[0] == '.' {
			l = l[1:]
		}
		msg.Write(l)
	}
}
