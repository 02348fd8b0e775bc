package mailer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// SMTP pipelining (RFC 2920). When the server's EHLO offers PIPELINING, a
// message costs two round trips instead of four: MAIL FROM, every RCPT TO
// and DATA go out in one write and their replies are read together, then
// the message and the final dot, then the final reply.
//
// go-smtp's client (v0.25) has no pipelined mode and keeps its connection
// and reader private, so a pipelined transaction is written and read here,
// on the same connection (SMTPSender.wire: the TLS connection when there is
// TLS; for STARTTLS, startTLS below makes it rather than go-smtp). go-smtp
// still greets, says EHLO, authenticates, and sends NOOP, RSET and QUIT.
//
// Two readers on one connection is sound because neither ever holds bytes
// the other needs. An SMTP server sends nothing unsolicited: it only
// answers commands, so once a reader has read the reply to the last
// command sent, the server has nothing more in flight and that reader's
// buffer is empty. go-smtp reads every reply of its commands to the end
// before it returns, and a pipelined transaction reads every reply of its
// commands, whatever was refused (RFC 2920 3.1), before go-smtp speaks
// again. Should a server break that rule (bytes left in the buffer after a
// transaction), or a reply not be read whole (a network error, a timeout),
// the connection is closed (SMTPSender.lost) instead of being reused.

// pipe reads and writes pipelined transactions on a connection.
type pipe struct {
	r *textproto.Reader
	w *textproto.Writer
}

func newPipe(conn net.Conn) *pipe {
	return &pipe{
		r: textproto.NewReader(bufio.NewReader(&lineLimitReader{r: conn})),
		w: textproto.NewWriter(bufio.NewWriter(conn)),
	}
}

// pipelined sends one message with MAIL FROM, RCPT TO and DATA in one
// write. Errors are those of the go-smtp path (transaction): a refused
// MAIL FROM is a mailFromError, a refusal is a *smtp.SMTPError wrapped
// with "RCPT TO: ", "DATA: " or "end of DATA: ", the first in command order.
func (s *SMTPSender) pipelined(from string, rcpts []string, utf8 bool, raw []byte) (string, error) {
	if strings.ContainsAny(from, "\r\n") {
		return "", &PermanentError{Err: errors.New("mailer: a line must not contain CR or LF")}
	}
	for _, r := range rcpts {
		if strings.ContainsAny(r, "\r\n") {
			return "", &PermanentError{Err: errors.New("mailer: a line must not contain CR or LF")}
		}
	}
	if s.pipe == nil {
		s.pipe = newPipe(s.wire)
	}
	p := s.pipe
	defer func() {
		if p.r.R.Buffered() > 0 {
			s.lost = true // bytes no command asked for
		}
	}()

	// The MAIL parameters go-smtp's Client.Mail sends for these options.
	w := p.w.W
	w.WriteString("MAIL FROM:<")
	w.WriteString(from)
	w.WriteByte('>')
	if ok, _ := s.client.Extension("8BITMIME"); ok {
		w.WriteString(" BODY=8BITMIME")
	}
	if utf8 {
		w.WriteString(" SMTPUTF8")
	}
	w.WriteString("\r\n")
	for _, r := range rcpts {
		w.WriteString("RCPT TO:<")
		w.WriteString(r)
		w.WriteString(">\r\n")
	}
	w.WriteString("DATA\r\n")
	s.wire.SetDeadline(time.Now().Add(s.cfg.Timeout))
	if err := w.Flush(); err != nil {
		s.lost = true
		return "", &mailFromError{err}
	}

	// Every reply is read, in order, whatever was refused before it.
	n := len(rcpts) + 2
	var first error
	dataTaken := false
	for i := range n {
		expect := 25 // RCPT TO: 250 or 251
		switch i {
		case 0:
			expect = 250
		case n - 1:
			expect = 354
		}
		_, err := readReply(p.r, expect)
		if err != nil && first == nil {
			switch i {
			case 0:
				first = &mailFromError{err}
			case n - 1:
				first = fmt.Errorf("DATA: %w", err)
			default:
				first = fmt.Errorf("RCPT TO: %w", err)
			}
		}
		var se *smtp.SMTPError
		if err != nil && !errors.As(err, &se) {
			// No whole reply (network error, timeout): what the server
			// has read and will answer is unknown.
			s.lost = true
			break
		}
		dataTaken = i == n-1 && err == nil
	}
	if first != nil {
		if dataTaken {
			// The server waits for the message although MAIL FROM or a
			// RCPT TO was refused (a server may take DATA once one RCPT
			// was accepted). SMTP cannot abort DATA, and ending it would
			// deliver to some recipients only: the go-smtp path would have
			// sent nothing, so nothing is sent and the connection closed.
			s.lost = true
		}
		return "", first
	}

	// The message (dot-stuffed, as go-smtp's DATA writer does) and the
	// final dot; its reply gets twice the Timeout, as on the go-smtp path.
	s.wire.SetDeadline(time.Now().Add(2 * s.cfg.Timeout))
	dw := p.w.DotWriter()
	if _, err := dw.Write(raw); err != nil {
		s.lost = true
		return "", fmt.Errorf("DATA: %w", err)
	}
	if err := dw.Close(); err != nil {
		s.lost = true
		return "", fmt.Errorf("end of DATA: %w", err)
	}
	msg, err := readReply(p.r, 250)
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			s.lost = true
		}
		return "", fmt.Errorf("end of DATA: %w", err)
	}
	return "250 " + msg, nil
}

// readReply reads one whole reply. A reply other than expect (as
// textproto.Reader.ReadResponse matches it) is a *smtp.SMTPError, as
// go-smtp's client returns it; any other error means no whole reply came.
func readReply(r *textproto.Reader, expect int) (string, error) {
	_, msg, err := r.ReadResponse(expect)
	var te *textproto.Error
	if errors.As(err, &te) {
		return msg, smtpError(te)
	}
	return msg, err
}

// smtpError is go-smtp's conversion of a reply into a *smtp.SMTPError: an
// RFC 3463 enhanced code leading the text goes to EnhancedCode, and is
// removed from the text's further lines.
func smtpError(te *textproto.Error) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: te.Code, Message: te.Msg}
	code, msg, ok := strings.Cut(te.Msg, " ")
	if !ok {
		return se
	}
	parts := strings.Split(code, ".")
	if len(parts) != 3 {
		return se
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return se
		}
		ec[i] = n
	}
	se.EnhancedCode = ec
	se.Message = strings.ReplaceAll(msg, "\n"+code+" ", "\n")
	return se
}

// lineLimitReader fails a reply line longer than 2,000 bytes (twice RFC
// 5321's limit, as go-smtp's client does), so a server cannot grow the
// reader's buffer without bound.
type lineLimitReader struct {
	r    io.Reader
	line int // bytes since the last LF
}

const maxReplyLine = 2000

func (l *lineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if i := bytes.LastIndexByte(p[:n], '\n'); i >= 0 {
		l.line = n - i - 1
	} else {
		l.line += n
	}
	if l.line > maxReplyLine {
		return 0, smtp.ErrTooLongLine
	}
	return n, err
}

// startTLS reads the greeting, says EHLO and STARTTLS on conn, and returns
// the TLS connection after the handshake. go-smtp's client is then given
// that connection (NewClientStartTLS would make it itself and keep it).
func startTLS(ctx context.Context, conn net.Conn, tlsCfg *tls.Config, cfg SMTPConfig) (*tls.Conn, error) {
	r := textproto.NewReader(bufio.NewReader(&lineLimitReader{r: conn}))
	step := func(cmd string, expect int) (string, error) {
		conn.SetDeadline(time.Now().Add(cfg.Timeout))
		if cmd != "" {
			if _, err := io.WriteString(conn, cmd+"\r\n"); err != nil {
				return "", err
			}
		}
		return readReply(r, expect)
	}
	if _, err := step("", 220); err != nil {
		return nil, err
	}
	ehlo, err := step("EHLO "+cfg.HeloName, 250)
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
		ehlo, err = "", nil // no EHLO: no extensions, so no STARTTLS
	}
	if err != nil {
		return nil, err
	}
	offered := false
	for _, l := range strings.Split(ehlo, "\n")[1:] {
		offered = offered || strings.EqualFold(strings.TrimSpace(l), "STARTTLS")
	}
	if !offered {
		return nil, errors.New("the server does not offer STARTTLS")
	}
	if _, err := step("STARTTLS", 220); err != nil {
		return nil, err
	}
	if r.R.Buffered() > 0 {
		// Bytes sent before TLS must not pass for replies after it.
		return nil, errors.New("the server sent more than its reply to STARTTLS")
	}
	tc := tls.Client(conn, tlsCfg)
	hctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// greetingReplay is what go-smtp's client, given the connection after
// STARTTLS, reads as the server's greeting: it expects one first on every
// connection, and the real one was read before TLS. After STARTTLS the
// client starts again with EHLO (RFC 3207), as go-smtp then does.
const greetingReplay = "220 greeting read before STARTTLS\r\n"

// greetedConn returns greeting before what the connection reads.
type greetedConn struct {
	net.Conn
	greeting []byte
}

func (c *greetedConn) Read(p []byte) (int, error) {
	if len(c.greeting) > 0 {
		n := copy(p, c.greeting)
		c.greeting = c.greeting[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
