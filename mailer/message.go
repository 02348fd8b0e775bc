// Package mailer composes, queues and sends Herald's email. It knows nothing of
// invites or identity: feature packages render a Message (often through
// Templates), Enqueue it inside their own bbolt write transaction (a
// transactional outbox), call Wake after the commit, and the Queue's worker
// sends it through a Sender (SMTPSender, or DevMailbox when no SMTP server is
// configured), recording every attempt with the server's reply.
package mailer

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// Message is what a feature package asks to send.
type Message struct {
	To      string // recipient address (a bare addr-spec, e.g. alice@example.org)
	Subject string // one line: CR, LF and other control characters are refused; capped at MaxSubjectRunes
	Text    string // text/plain part
	HTML    string // text/html part (optional)
	// Raw, if set, is a complete RFC 5322 message rendered by an operator
	// template (sydent style). It is sent as is, except that line endings are
	// made CRLF and Date, Message-ID, From and To are added when missing.
	// To is still the envelope recipient. Subject/Text/HTML/Headers are ignored.
	Raw []byte
	// Headers are extra header fields (List-Unsubscribe, ...). Names must be
	// valid field names and may not replace the structural headers; values
	// may not contain CR or LF (non-ASCII values are RFC 2047 encoded).
	Headers map[string]string
	Kind    string // "invite", "validation", ...: shown in the console
	Ref     string // owner reference, e.g. "invite:42": the console's timeline key
}

// MaxSubjectRunes caps Subject; a longer one is cut and ends with "…".
const MaxSubjectRunes = 200

// ErrInvalidMessage wraps every reason a Message cannot be composed.
var ErrInvalidMessage = errors.New("mailer: invalid message")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
}

// reserved header fields a Message's Headers may not set (Compose writes them).
var reserved = map[string]bool{
	"From": true, "To": true, "Cc": true, "Bcc": true, "Subject": true, "Date": true,
	"Message-Id": true, "Mime-Version": true, "Content-Type": true,
	"Content-Transfer-Encoding": true, "Sender": true,
}

// CheckHeaderValue refuses a header value containing CR, LF or NUL: the
// characters that would let a value start a new header or body.
func CheckHeaderValue(v string) error {
	if i := strings.IndexAny(v, "\r\n\x00"); i >= 0 {
		return invalid("header value contains a line break or NUL at byte %d", i)
	}
	return nil
}

// CapSubject trims spaces and cuts s to MaxSubjectRunes runes, ending a cut
// subject with "…". It does not check for line breaks.
func CapSubject(s string) string {
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) <= MaxSubjectRunes {
		return s
	}
	r := []rune(s)
	return strings.TrimRightFunc(string(r[:MaxSubjectRunes-1]), unicode.IsSpace) + "…"
}

func checkSubject(s string) error {
	if err := CheckHeaderValue(s); err != nil {
		return invalid("subject contains a line break")
	}
	for _, r := range s {
		if r != '\t' && (r < 0x20 || r == 0x7f) {
			return invalid("subject contains control character %U", r)
		}
	}
	return nil
}

// checkFieldName accepts RFC 5322 field names: printable ASCII without ':'.
func checkFieldName(name string) error {
	if name == "" {
		return invalid("empty header name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= 32 || c >= 127 || c == ':' {
			return invalid("header name %q is not a valid field name", name)
		}
	}
	return nil
}

// ParseRecipient checks that addr is a single bare email address and returns it
// trimmed.
func ParseRecipient(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if err := CheckHeaderValue(addr); err != nil {
		return "", invalid("recipient contains a line break")
	}
	if simpleAddrSpec(addr) {
		return addr, nil // what mail.ParseAddress gives it
	}
	a, err := mail.ParseAddress(addr)
	if err != nil || a.Name != "" || a.Address != addr {
		return "", invalid("recipient is not a bare email address")
	}
	return addr, nil
}

// NewMessageID returns a random Message-ID "<32 hex digits@domain>" with the
// domain of from (an address, possibly with a display name).
func NewMessageID(from string) string {
	var b [16]byte
	rand.Read(b[:])
	return "<" + hex.EncodeToString(b[:]) + "@" + domainOf(from) + ">"
}

func domainOf(from string) string {
	d := "localhost"
	if a, err := mail.ParseAddress(from); err == nil {
		if i := strings.LastIndexByte(a.Address, '@'); i >= 0 && i+1 < len(a.Address) {
			d = a.Address[i+1:]
		}
	}
	return d
}

// normalizeMessageID makes id "<left@right>".
func normalizeMessageID(id, from string) string {
	id = strings.TrimSpace(id)
	id = strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">")
	if !strings.Contains(id, "@") {
		id += "@" + domainOf(from)
	}
	return "<" + id + ">"
}

// Compose renders m as RFC 5322 bytes (CRLF line endings): Date, Message-ID,
// From, To, Subject (RFC 2047 encoded when not ASCII), MIME-Version, the extra
// headers in name order, and a quoted-printable text/plain part, or a
// multipart/alternative of text/plain and text/html when m.HTML is set. The
// multipart boundary is derived from messageID, so equal inputs give equal
// bytes (golden tests inject the date and Message-ID).
func Compose(m Message, from string, date time.Time, messageID string) ([]byte, error) {
	if _, err := ParseRecipient(m.To); err != nil {
		return nil, err
	}
	fromAddr, err := parseFrom(from)
	if err != nil {
		return nil, invalid("from %q is not an address: %v", from, err)
	}
	if err := CheckHeaderValue(messageID); err != nil {
		return nil, err
	}
	messageID = normalizeMessageID(messageID, from)
	if m.Raw != nil {
		return composeRaw(m, fromAddr, date, messageID)
	}
	if err := checkSubject(m.Subject); err != nil {
		return nil, err
	}
	subject := CapSubject(m.Subject)
	if m.Text == "" && m.HTML == "" {
		return nil, invalid("message has neither text nor HTML")
	}

	var buf bytes.Buffer
	// Sized once for the headers and both parts (quoted-printable adds a
	// little): the buffer would otherwise be copied as it grows.
	buf.Grow(1024 + (len(m.Text)+len(m.HTML))*9/8)
	// A date is far shorter than a line: writeHeader would not fold it.
	buf.WriteString("Date: ")
	buf.Write(date.AppendFormat(buf.AvailableBuffer(), time.RFC1123Z))
	buf.WriteString("\r\n")
	writeHeader(&buf, "Message-ID", messageID)
	writeHeader(&buf, "From", fromAddr)
	writeHeader(&buf, "To", headerAddress(m.To))
	writeHeader(&buf, "Subject", encodeWord(subject))
	writeHeader(&buf, "MIME-Version", "1.0")
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := m.Headers[k]
		if err := checkFieldName(k); err != nil {
			return nil, err
		}
		if reserved[textproto.CanonicalMIMEHeaderKey(k)] {
			return nil, invalid("header %s is set by the mailer", k)
		}
		if err := CheckHeaderValue(v); err != nil {
			return nil, invalid("header %s contains a line break", k)
		}
		if len(v) > 900 {
			return nil, invalid("header %s is longer than 900 bytes", k)
		}
		writeHeader(&buf, k, encodeWord(v))
	}

	switch {
	case m.HTML == "":
		writePartHeaders(&buf, "text/plain; charset=utf-8")
		buf.WriteString("\r\n")
		writeQP(&buf, m.Text)
	case m.Text == "":
		writePartHeaders(&buf, "text/html; charset=utf-8")
		buf.WriteString("\r\n")
		writeQP(&buf, m.HTML)
	default:
		// What mime/multipart.Writer writes for these two parts (its
		// CreatePart writes a part's headers in name order), without its
		// per-part buffer, header map and formatting.
		sum := sha256.Sum256([]byte(messageID))
		boundary := "herald-" + hex.EncodeToString(sum[:12])
		writeHeader(&buf, "Content-Type", `multipart/alternative; boundary="`+boundary+`"`)
		buf.WriteString("\r\n--")
		buf.WriteString(boundary)
		buf.WriteString("\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
		writeQP(&buf, m.Text)
		buf.WriteString("\r\n--")
		buf.WriteString(boundary)
		buf.WriteString("\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/html; charset=utf-8\r\n\r\n")
		writeQP(&buf, m.HTML)
		buf.WriteString("\r\n--")
		buf.WriteString(boundary)
		buf.WriteString("--\r\n\r\n")
	}
	return buf.Bytes(), nil
}

func writePartHeaders(buf *bytes.Buffer, ct string) {
	writeHeader(buf, "Content-Type", ct)
	writeHeader(buf, "Content-Transfer-Encoding", "quoted-printable")
}

// writeQP writes s quoted-printable with CRLF line endings, ending with CRLF
// (appendQP).
func writeQP(buf *bytes.Buffer, s string) {
	buf.Write(appendQP(buf.AvailableBuffer(), s))
}

// encodeWord RFC 2047-encodes v when it is not printable ASCII, or when it
// contains "=?" (which a reader would otherwise decode as an encoded word).
func encodeWord(v string) string {
	if strings.Contains(v, "=?") {
		return forceEncode(v)
	}
	for i := 0; i < len(v); i++ {
		if v[i] >= 0x80 {
			return mime.QEncoding.Encode("utf-8", v)
		}
	}
	return v
}

// forceEncode writes v as base64 encoded words of at most 72 characters,
// split on rune boundaries.
func forceEncode(v string) string {
	var words []string
	for len(v) > 0 {
		n := 0
		for n < len(v) {
			_, size := utf8.DecodeRuneInString(v[n:])
			if n+size > 45 {
				break
			}
			n += size
		}
		words = append(words, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(v[:n]))+"?=")
		v = v[n:]
	}
	return strings.Join(words, " ")
}

// writeHeader writes "Name: value" folded at spaces to lines of at most 78
// characters where possible.
func writeHeader(buf *bytes.Buffer, name, value string) {
	buf.WriteString(name)
	buf.WriteString(": ")
	width := len(name) + 2
	for i := 0; ; i++ {
		w, rest, more := strings.Cut(value, " ")
		if i > 0 {
			if width+1+len(w) > 78 {
				buf.WriteString("\r\n ")
				width = 1
			} else {
				buf.WriteByte(' ')
				width++
			}
		}
		buf.WriteString(w)
		width += len(w)
		if !more {
			break
		}
		value = rest
	}
	buf.WriteString("\r\n")
}

// lastFrom is the last From address parseFrom parsed, with its result: a
// Queue composes every mail with the same one.
var lastFrom atomic.Pointer[[2]string]

// parseFrom is mail.ParseAddress(from).String(), remembered for the last
// from.
func parseFrom(from string) (string, error) {
	if c := lastFrom.Load(); c != nil && c[0] == from {
		return c[1], nil
	}
	a, err := mail.ParseAddress(from)
	if err != nil {
		return "", err
	}
	s := a.String()
	lastFrom.Store(&[2]string{from, s})
	return s, nil
}

// toCRLF makes every line ending CRLF.
func toCRLF(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	b = bytes.ReplaceAll(b, []byte("\r"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

func composeRaw(m Message, from string, date time.Time, messageID string) ([]byte, error) {
	raw := toCRLF(bytes.TrimLeft(m.Raw, "\r\n"))
	head, _, found := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !found {
		return nil, invalid("raw message has no blank line between header and body")
	}
	hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(append([]byte{}, head...), "\r\n\r\n"...)))).ReadMIMEHeader()
	if err != nil {
		return nil, invalid("raw message header: %v", err)
	}
	var pre bytes.Buffer
	if hdr.Get("Date") == "" {
		writeHeader(&pre, "Date", date.Format(time.RFC1123Z))
	}
	if hdr.Get("Message-Id") == "" {
		writeHeader(&pre, "Message-ID", messageID)
	}
	if hdr.Get("From") == "" {
		writeHeader(&pre, "From", from)
	}
	if hdr.Get("To") == "" {
		writeHeader(&pre, "To", headerAddress(m.To))
	}
	out := append(pre.Bytes(), raw...)
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, "\r\n"...)
	}
	return out, nil
}

// Parsed is a received message taken apart: what tests, the dev mailbox and
// the console need.
type Parsed struct {
	Header  mail.Header
	Subject string // decoded
	Text    string // text/plain part, decoded, LF line endings
	HTML    string // text/html part, decoded, LF line endings
}

// Parse takes apart a message composed by Compose (or any simple
// single-part or multipart/alternative message, quoted-printable, base64 or
// 7/8bit).
func Parse(raw []byte) (*Parsed, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	p := &Parsed{Header: msg.Header}
	dec := new(mime.WordDecoder)
	if s, err := dec.DecodeHeader(msg.Header.Get("Subject")); err == nil {
		p.Subject = s
	} else {
		p.Subject = msg.Header.Get("Subject")
	}
	err = p.walk(textproto.MIMEHeader(msg.Header), msg.Body, 0)
	return p, err
}

func (p *Parsed) walk(h textproto.MIMEHeader, body io.Reader, depth int) error {
	ct := h.Get("Content-Type")
	if ct == "" {
		ct = "text/plain"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Errorf("content-type: %w", err)
	}
	if strings.HasPrefix(mt, "multipart/") {
		if depth > 4 {
			return errors.New("multipart nested too deep")
		}
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			// multipart.Reader already decodes quoted-printable parts.
			if err := p.walk(part.Header, part, depth+1); err != nil {
				return err
			}
		}
	}
	var r io.Reader = body
	switch strings.ToLower(h.Get("Content-Transfer-Encoding")) {
	case "quoted-printable":
		r = quotedprintable.NewReader(body)
	case "base64":
		r = base64Reader(body)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	switch mt {
	case "text/plain":
		if p.Text == "" {
			p.Text = s
		}
	case "text/html":
		if p.HTML == "" {
			p.HTML = s
		}
	}
	return nil
}

// base64Reader decodes base64 that may be split over lines.
func base64Reader(r io.Reader) io.Reader {
	return base64.NewDecoder(base64.StdEncoding, &stripSpace{r: r})
}

type stripSpace struct{ r io.Reader }

func (s *stripSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}
