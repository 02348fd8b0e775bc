package loadgen

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"time"
)

// smtpSink is the benchmark's SMTP server: it accepts every message and
// hands it to deliver with its recipients. It shares the machine with the
// Herald it measures, so it is written to cost little: a line reader over a
// large buffer, replies written without formatting, no per-byte calls.
// go-smtp's server (what Herald's own tests use) spent about 115 µs of CPU
// per invite mail here, as much as a third of what Herald spends storing
// the invite, reading the message a byte at a time. It speaks the part of
// RFC 5321 a sending client needs: HELO/EHLO, MAIL, RCPT, DATA with
// dot-unstuffing, RSET, NOOP, QUIT; anything else is answered 502. No TLS,
// no AUTH, no extensions beyond 8BITMIME and PIPELINING (RFC 2920): replies
// to commands that arrived together go out in one write, once no further
// command is buffered, and always before the body is read after DATA.
type smtpSink struct {
	deliver func(to []string, raw []byte)

	mu    sync.Mutex
	conns map[net.Conn]bool
	ln    net.Listener
}

// maxSinkMessage bounds one message (10 MB, like the limit Herald's own
// outgoing mail is far below).
const maxSinkMessage = 10 << 20

func (s *smtpSink) serve(ln net.Listener) {
	s.mu.Lock()
	s.ln, s.conns = ln, map[net.Conn]bool{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.session(c)
		}()
	}
}

func (s *smtpSink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
}

func (s *smtpSink) session(c net.Conn) {
	br := bufio.NewReaderSize(c, 64<<10)
	bw := bufio.NewWriterSize(c, 4<<10)
	reply := func(line string) bool {
		bw.WriteString(line)
		bw.WriteString("\r\n")
		// Replies wait while the client has pipelined more commands.
		if br.Buffered() > 0 {
			return true
		}
		return bw.Flush() == nil
	}
	if !reply("220 bench.localhost ESMTP herald bench sink") {
		return
	}
	var to []string
	var msg bytes.Buffer
	for {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(string(line), "\r\n")
		verb := strings.ToUpper(cmd)
		if i := strings.IndexByte(verb, ' '); i >= 0 {
			verb = verb[:i]
		}
		ok := true
		switch verb {
		case "EHLO":
			ok = reply("250-bench.localhost\r\n250-PIPELINING\r\n250 8BITMIME")
		case "HELO":
			ok = reply("250 bench.localhost")
		case "MAIL":
			to = to[:0]
			ok = reply("250 2.1.0 OK")
		case "RCPT":
			a := cmd[len(verb):]
			if i := strings.IndexByte(a, '<'); i >= 0 {
				a = a[i+1:]
				if j := strings.IndexByte(a, '>'); j >= 0 {
					a = a[:j]
				}
			}
			to = append(to, strings.ToLower(a))
			ok = reply("250 2.1.5 OK")
		case "DATA":
			if len(to) == 0 {
				ok = reply("503 5.5.1 RCPT first")
				break
			}
			// The replies held back for MAIL and RCPT go out with 354,
			// whatever is buffered: the client sends the body only then.
			if !reply("354 end with <CRLF>.<CRLF>") || bw.Flush() != nil {
				return
			}
			msg.Reset()
			for midLine := false; ; {
				l, err := br.ReadSlice('\n')
				if err == bufio.ErrBufferFull {
					// A line longer than the buffer: the rest of it comes next.
					if msg.Len()+len(l) > maxSinkMessage {
						return
					}
					msg.Write(l)
					midLine = true
					continue
				}
				if err != nil {
					return
				}
				if !midLine && l[0] == '.' {
					if len(l) <= 3 && strings.TrimRight(string(l), "\r\n") == "." {
						break
					}
					l = l[1:] // dot-stuffed
				}
				if msg.Len()+len(l) > maxSinkMessage {
					return
				}
				msg.Write(l)
				midLine = false
			}
			s.deliver(append([]string(nil), to...), bytes.Clone(msg.Bytes()))
			to = to[:0]
			ok = reply("250 2.0.0 accepted")
		case "RSET":
			to = to[:0]
			ok = reply("250 2.0.0 OK")
		case "NOOP":
			ok = reply("250 2.0.0 OK")
		case "QUIT":
			reply("221 2.0.0 bye")
			bw.Flush()
			return
		default:
			ok = reply("502 5.5.2 not implemented")
		}
		if !ok {
			return
		}
	}
}
