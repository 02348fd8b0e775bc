package mailer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Sender hands one composed message to the next hop. An error that is a
// *smtp.SMTPError carries the server's reply; Temporary tells the Queue
// whether to retry.
type Sender interface {
	Send(ctx context.Context, from string, to []string, raw []byte) error
}

// ReplySender is a Sender that also returns the server's final reply on
// success (e.g. "250 2.0.0 Ok: queued as 4F2A1"), which the Queue records.
type ReplySender interface {
	Sender
	SendReply(ctx context.Context, from string, to []string, raw []byte) (string, error)
}

// PermanentError marks a failure that retrying cannot fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Temporary reports whether a Send error is worth retrying: 4xx replies and
// network or TLS errors are; 5xx replies and PermanentErrors are not.
func Temporary(err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Temporary()
	}
	var pe *PermanentError
	return !errors.As(err, &pe)
}

// ReplyClass is the class of the SMTP server's reply to a send: "2xx" for a
// message accepted (or kept in the dev mailbox), "4xx" or "5xx" for a
// refusal, "none" when no reply came (network, TLS or AUTH setup errors).
func ReplyClass(err error) string {
	if err == nil {
		return "2xx"
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 200 && se.Code < 600 {
		return fmt.Sprintf("%dxx", se.Code/100)
	}
	return "none"
}

// SMTPConfig configures an SMTPSender.
type SMTPConfig struct {
	Host     string
	Port     int    // 0: 465 for "tls", 25 for "none", else 587
	Security string // "none", "starttls" (default) or "tls" (implicit TLS)
	Username string // AUTH PLAIN or LOGIN, whichever the server offers; empty: no AUTH
	Password string
	// InsecureSkipVerify accepts any server certificate (tests only).
	InsecureSkipVerify bool
	// Timeout bounds the dial, the TLS handshake and each command; the reply
	// to the end of DATA gets twice as long. Default 10 s.
	Timeout time.Duration
	// IdleTimeout closes a connection unused this long. Default 30 s.
	IdleTimeout time.Duration
	// HeloName is sent in EHLO. Default: the host name, else "localhost".
	HeloName string
}

// SMTPSender sends through one SMTP server, keeping one connection open
// between messages (checked with NOOP before reuse when unused for a
// second or more, reopened on error, closed when idle). It is safe for
// concurrent use; sends are serialised.
type SMTPSender struct {
	cfg SMTPConfig

	mu     sync.Mutex
	client *smtp.Client
	conn   net.Conn
	// wire is the connection go-smtp's client reads and writes (above TLS
	// when there is TLS); pipe, made on the first pipelined message, reads
	// and writes it for pipelined transactions (pipeline.go). lost says a
	// pipelined transaction left the connection in an unknown state.
	wire   net.Conn
	pipe   *pipe
	lost   bool
	idle   *time.Timer
	closed bool
	// lastOK is when the connection last took a message.
	lastOK time.Time
}

// noopAfter: a connection that took a message less than this long ago is
// reused without a NOOP first (one round trip of the five a message costs,
// or of the three with pipelining, and the server's work for it). Should
// the server have closed it anyway (an SMTP server may close after some
// number of messages), MAIL FROM fails before anything of the message was
// sent, and the message goes once more over a new connection.
const noopAfter = time.Second

// NewSMTPSender returns a sender; it connects on the first Send.
func NewSMTPSender(cfg SMTPConfig) *SMTPSender {
	if cfg.Security == "" {
		cfg.Security = "starttls"
	}
	if cfg.Port == 0 {
		switch cfg.Security {
		case "tls":
			cfg.Port = 465
		case "none":
			cfg.Port = 25
		default:
			cfg.Port = 587
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.HeloName == "" {
		cfg.HeloName = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" && validHelo(h) {
			cfg.HeloName = h
		}
	}
	return &SMTPSender{cfg: cfg}
}

func validHelo(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c == '.' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// Addr is host:port of the server.
func (s *SMTPSender) Addr() string {
	return net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
}

// Send delivers raw to the server for the recipients in to.
func (s *SMTPSender) Send(ctx context.Context, from string, to []string, raw []byte) error {
	_, err := s.SendReply(ctx, from, to, raw)
	return err
}

// SendReply is Send, also returning the server's reply to the end of DATA.
func (s *SMTPSender) SendReply(ctx context.Context, from string, to []string, raw []byte) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", errors.New("mailer: SMTP sender closed")
	}
	if s.idle != nil {
		s.idle.Stop()
	}
	reused := false
	if s.client != nil {
		if time.Since(s.lastOK) >= noopAfter {
			if err := s.client.Noop(); err != nil {
				s.drop()
			}
		}
		reused = s.client != nil
	}
	reply, err := s.send(ctx, from, to, raw)
	var mf *mailFromError
	var se *smtp.SMTPError
	if err != nil && reused && ctx.Err() == nil && errors.As(err, &mf) && (!errors.As(err, &se) || se.Code == 421) {
		// The reused connection was closed (or is closing) before the
		// server took anything of this message.
		s.drop()
		reply, err = s.send(ctx, from, to, raw)
	}
	if err != nil {
		return "", err
	}
	s.lastOK = time.Now()
	s.idle = time.AfterFunc(s.cfg.IdleTimeout, s.closeIdle)
	return reply, nil
}

// send sends one message over the open connection, or a new one.
func (s *SMTPSender) send(ctx context.Context, from string, to []string, raw []byte) (string, error) {
	if s.client == nil {
		if err := s.connect(ctx); err != nil {
			return "", err
		}
	}
	// A cancelled ctx aborts a command in flight by closing the connection.
	conn := s.conn
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	reply, err := s.transaction(from, to, raw)
	if !stop() || ctx.Err() != nil {
		s.drop()
		if err == nil {
			err = ctx.Err()
		}
		return "", err
	}
	if err != nil {
		var se *smtp.SMTPError
		var pe *PermanentError
		if s.lost {
			s.drop()
		} else if errors.As(err, &pe) && s.client.Reset() == nil {
			// Refused before the server saw it; the connection is fine.
		} else if errors.As(err, &se) && s.client.Reset() == nil {
			// The server refused this message; the connection is fine.
		} else {
			s.drop()
		}
		return "", err
	}
	if s.lost {
		s.drop()
	}
	return reply, nil
}

// mailFromError is a failure at MAIL FROM, the first command of a message.
type mailFromError struct{ err error }

func (e *mailFromError) Error() string { return "MAIL FROM: " + e.err.Error() }
func (e *mailFromError) Unwrap() error { return e.err }

// transaction sends one message. Addresses go out with IDNA (punycode)
// domains; an address with a non-ASCII local part needs SMTPUTF8, and fails
// permanently with ErrNeedsSMTPUTF8 when the server does not offer it.
func (s *SMTPSender) transaction(from string, to []string, raw []byte) (string, error) {
	c := s.client
	from, needUTF8, err := EnvelopeAddress(from)
	if err != nil {
		return "", &PermanentError{Err: err}
	}
	rcpts := make([]string, len(to))
	for i, r := range to {
		a, u, err := EnvelopeAddress(r)
		if err != nil {
			return "", &PermanentError{Err: err}
		}
		rcpts[i], needUTF8 = a, needUTF8 || u
	}
	var opts *smtp.MailOptions
	if needUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return "", &PermanentError{Err: ErrNeedsSMTPUTF8}
		}
		opts = &smtp.MailOptions{UTF8: true}
	}
	if ok, _ := c.Extension("PIPELINING"); ok {
		return s.pipelined(from, rcpts, needUTF8, raw)
	}
	if err := c.Mail(from, opts); err != nil {
		return "", &mailFromError{err}
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", fmt.Errorf("RCPT TO: %w", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(raw); err != nil {
		w.Close()
		return "", fmt.Errorf("DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("end of DATA: %w", err)
	}
	return "250 " + resp.StatusText, nil
}

func (s *SMTPSender) connect(ctx context.Context) error {
	cfg := s.cfg
	d := net.Dialer{Timeout: cfg.Timeout}
	raw, err := d.DialContext(ctx, "tcp", s.Addr())
	if err != nil {
		return err
	}
	// Every deadline go-smtp sets (its own defaults are minutes) is capped.
	var conn net.Conn = &cappedConn{Conn: raw, max: 2 * cfg.Timeout}
	tlsCfg := &tls.Config{ServerName: cfg.Host, InsecureSkipVerify: cfg.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	var c *smtp.Client
	switch cfg.Security {
	case "tls":
		tc := tls.Client(conn, tlsCfg)
		hctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		err = tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
		c = smtp.NewClient(conn)
	case "none":
		c = smtp.NewClient(conn)
	default:
		// STARTTLS is done here rather than by go-smtp, which would make
		// the TLS connection itself and keep it private: pipelined
		// transactions need the connection go-smtp talks over.
		tc, err := startTLS(ctx, conn, tlsCfg, cfg)
		if err != nil {
			raw.Close()
			return fmt.Errorf("STARTTLS: %w", err)
		}
		conn = tc
		c = smtp.NewClient(&greetedConn{Conn: tc, greeting: []byte(greetingReplay)})
	}
	c.CommandTimeout = cfg.Timeout
	c.SubmissionTimeout = 2 * cfg.Timeout
	if err := c.Hello(cfg.HeloName); err != nil {
		c.Close()
		return fmt.Errorf("EHLO: %w", err)
	}
	if cfg.Username != "" {
		var a sasl.Client
		switch {
		case c.SupportsAuth(sasl.Plain):
			a = sasl.NewPlainClient("", cfg.Username, cfg.Password)
		case c.SupportsAuth(sasl.Login):
			a = sasl.NewLoginClient(cfg.Username, cfg.Password)
		default:
			c.Close()
			return &PermanentError{Err: errors.New("the SMTP server offers neither AUTH PLAIN nor AUTH LOGIN")}
		}
		if err := c.Auth(a); err != nil {
			c.Close()
			return fmt.Errorf("AUTH: %w", err)
		}
	}
	s.client, s.conn, s.wire = c, raw, conn
	return nil
}

// drop closes the current connection without ceremony.
func (s *SMTPSender) drop() {
	if s.client != nil {
		s.client.Close()
	}
	s.forget()
}

// forget clears the state of the current connection.
func (s *SMTPSender) forget() {
	s.client, s.conn, s.wire, s.pipe, s.lost = nil, nil, nil, nil, false
}

func (s *SMTPSender) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quit()
}

func (s *SMTPSender) quit() {
	if s.client == nil {
		return
	}
	s.conn.SetDeadline(time.Now().Add(time.Second))
	if s.client.Quit() != nil {
		s.client.Close()
	}
	s.forget()
}

// Close says QUIT on an open connection; later Sends fail.
func (s *SMTPSender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idle != nil {
		s.idle.Stop()
	}
	s.quit()
	s.closed = true
	return nil
}

// cappedConn caps every deadline at max from now.
type cappedConn struct {
	net.Conn
	max time.Duration
}

func (c *cappedConn) cap(t time.Time) time.Time {
	if limit := time.Now().Add(c.max); t.IsZero() || t.After(limit) {
		return limit
	}
	return t
}

func (c *cappedConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.cap(t)) }
func (c *cappedConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.cap(t)) }
func (c *cappedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.cap(t)) }

// SMTPPool sends through up to n SMTP connections at once (smtp.connections),
// each an SMTPSender that keeps its connection open between messages. A send
// takes a free connection, or waits for one. Each connection pipelines
// (RFC 2920) when the server offers PIPELINING.
type SMTPPool struct {
	free chan *SMTPSender
	all  []*SMTPSender
}

// NewSMTPPool returns a pool of n connections (at least 1) to the server of cfg.
func NewSMTPPool(cfg SMTPConfig, n int) *SMTPPool {
	n = max(n, 1)
	p := &SMTPPool{free: make(chan *SMTPSender, n)}
	for range n {
		s := NewSMTPSender(cfg)
		p.all = append(p.all, s)
		p.free <- s
	}
	return p
}

// Size is how many connections the pool may open.
func (p *SMTPPool) Size() int { return len(p.all) }

// Addr is the server's host:port.
func (p *SMTPPool) Addr() string { return p.all[0].Addr() }

// Send delivers raw through a free connection.
func (p *SMTPPool) Send(ctx context.Context, from string, to []string, raw []byte) error {
	_, err := p.SendReply(ctx, from, to, raw)
	return err
}

// SendReply is Send, also returning the server's reply to the end of DATA.
func (p *SMTPPool) SendReply(ctx context.Context, from string, to []string, raw []byte) (string, error) {
	var s *SMTPSender
	select {
	case s = <-p.free:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { p.free <- s }()
	return s.SendReply(ctx, from, to, raw)
}

// Close closes every connection; later Sends fail.
func (p *SMTPPool) Close() error {
	for _, s := range p.all {
		s.Close()
	}
	return nil
}
