// Package smtptest runs an in-process SMTP server on 127.0.0.1 for tests: it
// records every message it accepts, counts connections, can require AUTH,
// speak STARTTLS or implicit TLS with a self-signed certificate, and can be
// told to fail at AUTH, MAIL, RCPT or DATA with any 4xx or 5xx reply.
//
//	srv := smtptest.Start(t, smtptest.Options{})
//	// point the mailer at srv.Host, srv.Port (security "none")
//	msgs := srv.WaitFor(1, 5*time.Second)
package smtptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Stage is where a failure is injected.
type Stage string

const (
	AtAuth Stage = "AUTH"
	AtMail Stage = "MAIL"
	AtRcpt Stage = "RCPT"
	AtData Stage = "DATA"
)

// Options configure a test server.
type Options struct {
	// Security: "none" (default), "starttls" (offers STARTTLS) or "tls"
	// (implicit TLS). Certificates are self-signed: clients need
	// InsecureSkipVerify.
	Security string
	// Username and Password, if set, make AUTH required before MAIL.
	Username, Password string
	// AuthMechanisms offered (default PLAIN and LOGIN).
	AuthMechanisms []string
	// SMTPUTF8 advertises the SMTPUTF8 extension (RFC 6531), needed for
	// addresses with a non-ASCII local part. Without it, a MAIL asking for
	// SMTPUTF8 is refused and a non-ASCII envelope address is refused.
	SMTPUTF8 bool
	// OnData, if set, is called with the connection's number before a
	// message's DATA is answered: a test can hold replies there to see how
	// many sends are under way at once.
	OnData func(conn int)
}

// Message is one accepted message.
type Message struct {
	From string
	To   []string
	Data []byte
	// Conn numbers the connection it arrived on (1, 2, ...); TLS says whether
	// that connection was encrypted; AuthUser who authenticated ("" if none).
	Conn     int
	TLS      bool
	AuthUser string
	// UTF8 says the client asked for SMTPUTF8 on MAIL.
	UTF8 bool
}

// Server is a running test server.
type Server struct {
	Addr string // "127.0.0.1:PORT"
	Host string // "127.0.0.1"
	Port int

	t    testing.TB
	opts Options
	srv  *smtp.Server

	mu       sync.Mutex
	msgs     []Message
	conns    int
	open     []net.Conn
	fails    map[Stage]failure
	commands map[Stage]int
	notify   chan struct{}
}

type failure struct {
	code  int
	times int // remaining; <0 forever
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Security == "" {
		opts.Security = "none"
	}
	if len(opts.AuthMechanisms) == 0 {
		opts.AuthMechanisms = []string{sasl.Plain, sasl.Login}
	}
	s := &Server{t: t, opts: opts, fails: map[Stage]failure{}, commands: map[Stage]int{}, notify: make(chan struct{}, 1)}
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = "smtptest.localhost"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = 10 << 20
	srv.EnableSMTPUTF8 = opts.SMTPUTF8
	// Clients that hang up mid-reply (a worker stopped by its test) are normal here.
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	if opts.Security != "none" {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	}
	var ln net.Listener = &countingListener{Listener: l, s: s}
	if opts.Security == "tls" {
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	s.srv = srv
	s.Addr = l.Addr().String()
	host, port, _ := net.SplitHostPort(s.Addr)
	s.Host = host
	s.Port, _ = strconv.Atoi(port)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// Fail makes the next `times` commands at stage fail with code (e.g. 451 or
// 550); times < 0 fails them until Fail(stage, 0, 0) is called.
func (s *Server) Fail(stage Stage, code, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if times == 0 {
		delete(s.fails, stage)
		return
	}
	s.fails[stage] = failure{code: code, times: times}
}

// Commands counts the commands seen at a stage (including failed ones).
func (s *Server) Commands(stage Stage) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commands[stage]
}

// Connections counts the connections accepted so far.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Messages returns a copy of the messages accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// WaitFor waits until at least n messages were accepted and returns them, or
// fails the test after timeout.
func (s *Server) WaitFor(n int, timeout time.Duration) []Message {
	s.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if m := s.Messages(); len(m) >= n {
			return m
		}
		select {
		case <-s.notify:
		case <-deadline.C:
			s.t.Fatalf("smtptest: waited %v for %d messages, got %d", timeout, n, len(s.Messages()))
			return nil
		}
	}
}

// check counts a command at stage and returns the injected failure, if any.
func (s *Server) check(stage Stage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.commands[stage]++
	f, ok := s.fails[stage]
	if !ok {
		return nil
	}
	if f.times > 0 {
		f.times--
		if f.times == 0 {
			delete(s.fails, stage)
		} else {
			s.fails[stage] = f
		}
	}
	return &smtp.SMTPError{
		Code:         f.code,
		EnhancedCode: smtp.EnhancedCode{f.code / 100, 0, 0},
		Message:      fmt.Sprintf("smtptest: injected failure at %s", stage),
	}
}

type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns++
		l.s.open = append(l.s.open, c)
		l.s.mu.Unlock()
	}
	return c, err
}

// DropConnections closes every connection accepted so far, as a server
// restart or a NAT timeout would, without stopping the listener.
func (s *Server) DropConnections() {
	s.mu.Lock()
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.s.mu.Lock()
	n := b.s.conns
	b.s.mu.Unlock()
	_, isTLS := c.TLSConnectionState()
	return &session{s: b.s, conn: n, tls: isTLS, c: c}, nil
}

type session struct {
	s    *Server
	c    *smtp.Conn
	conn int
	tls  bool
	user string
	from string
	to   []string
	utf8 bool
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.Username == "" {
		return nil
	}
	return ss.s.opts.AuthMechanisms
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	login := func(user, pass string) error {
		if err := ss.s.check(AtAuth); err != nil {
			return err
		}
		if user != ss.s.opts.Username || pass != ss.s.opts.Password {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return smtp.ErrAuthFailed
			}
			return login(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{auth: login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.opts.Username != "" && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	if err := ss.s.check(AtMail); err != nil {
		return err
	}
	ss.utf8 = opts != nil && opts.UTF8
	if !ss.utf8 && !ascii(from) {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "non-ASCII address without SMTPUTF8"}
	}
	if _, ok := ss.c.TLSConnectionState(); ok {
		ss.tls = true
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.s.check(AtRcpt); err != nil {
		return err
	}
	if !ss.utf8 && !ascii(to) {
		// What a real server does (RFC 6531 3.4): no SMTPUTF8, no UTF-8 address.
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "non-ASCII address without SMTPUTF8"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.opts.OnData != nil {
		ss.s.opts.OnData(ss.conn)
	}
	if err := ss.s.check(AtData); err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, Message{From: ss.from, To: ss.to, Data: b, Conn: ss.conn, TLS: ss.tls, AuthUser: ss.user, UTF8: ss.utf8})
	ss.s.mu.Unlock()
	select {
	case ss.s.notify <- struct{}{}:
	default:
	}
	return nil
}

func (ss *session) Reset()        { ss.from, ss.to, ss.utf8 = "", nil, false }
func (ss *session) Logout() error { return nil }

// loginServer is the server side of the (obsolete but common) LOGIN mechanism.
type loginServer struct {
	auth func(user, pass string) error
	user string
	step int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if response != nil {
			l.user = string(response)
			l.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.user, string(response))
	}
	return nil, false, errors.New("unexpected response")
}

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "smtptest"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
