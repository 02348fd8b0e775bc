package mailer_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/herald-im/herald/mailer"
)

var fixedDate = time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)

const from = "Herald <herald@id.example.org>"

func TestComposeMultipart(t *testing.T) {
	m := mailer.Message{
		To:      "alice@example.org",
		Subject: "Bob invited you to “Café” ",
		Text:    "Hello Alice,\nJoin here: https://example.org/?a=b&c=d\n" + strings.Repeat("long line ", 20),
		HTML:    "<p>Hello <b>Alice</b> = é</p>",
		Headers: map[string]string{"List-Unsubscribe": "<mailto:unsub@id.example.org>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
	}
	raw, err := mailer.Compose(m, from, fixedDate, "<abc123@id.example.org>")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := mailer.Compose(m, from, fixedDate, "<abc123@id.example.org>")
	if !bytes.Equal(raw, again) {
		t.Error("Compose is not deterministic for equal inputs")
	}
	for i, line := range strings.Split(string(raw), "\r\n") {
		if len(line) > 78 {
			t.Errorf("line %d longer than 78: %q", i, line)
		}
		if strings.Contains(line, "\n") || strings.Contains(line, "\r") {
			t.Errorf("bare line break in line %d", i)
		}
	}
	if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) {
		t.Error("not all line endings are CRLF")
	}
	for i := range raw {
		if raw[i] >= 0x80 {
			t.Fatalf("non-ASCII byte at %d", i)
		}
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Date":                  "Sun, 01 Mar 2026 12:30:00 +0000",
		"Message-Id":            "<abc123@id.example.org>",
		"From":                  `"Herald" <herald@id.example.org>`,
		"To":                    "<alice@example.org>",
		"Mime-Version":          "1.0",
		"List-Unsubscribe":      "<mailto:unsub@id.example.org>",
		"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
	}
	for k, v := range want {
		if got := p.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.HasPrefix(p.Header.Get("Content-Type"), "multipart/alternative;") {
		t.Errorf("Content-Type = %q", p.Header.Get("Content-Type"))
	}
	if p.Subject != "Bob invited you to “Café”" {
		t.Errorf("subject = %q", p.Subject)
	}
	if !strings.HasPrefix(p.Header.Get("Subject"), "=?utf-8?q?") {
		t.Errorf("subject not RFC 2047 encoded: %q", p.Header.Get("Subject"))
	}
	if p.Text != m.Text+"\n" {
		t.Errorf("text = %q", p.Text)
	}
	if p.HTML != m.HTML+"\n" {
		t.Errorf("html = %q", p.HTML)
	}
}

func TestComposeTextOnly(t *testing.T) {
	raw, err := mailer.Compose(mailer.Message{To: "a@example.org", Subject: "Plain", Text: "hi"}, "herald@example.org", fixedDate, "x")
	if err != nil {
		t.Fatal(err)
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ct := p.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	if p.Header.Get("Message-Id") != "<x@example.org>" {
		t.Errorf("Message-ID = %q", p.Header.Get("Message-Id"))
	}
	if p.Subject != "Plain" || p.Text != "hi\n" || p.HTML != "" {
		t.Errorf("parsed = %+v", p)
	}
}

func TestComposeRefusesInjection(t *testing.T) {
	base := mailer.Message{To: "a@example.org", Subject: "ok", Text: "x"}
	cases := map[string]func(m *mailer.Message){
		"subject LF":       func(m *mailer.Message) { m.Subject = "hi\nBcc: evil@example.org" },
		"subject CR":       func(m *mailer.Message) { m.Subject = "hi\rBcc: evil@example.org" },
		"subject NUL":      func(m *mailer.Message) { m.Subject = "hi\x00" },
		"subject control":  func(m *mailer.Message) { m.Subject = "hi\x1b[31m" },
		"header value CR":  func(m *mailer.Message) { m.Headers = map[string]string{"X-A": "v\r\nBcc: e@example.org"} },
		"header name":      func(m *mailer.Message) { m.Headers = map[string]string{"X A": "v"} },
		"header colon":     func(m *mailer.Message) { m.Headers = map[string]string{"X:A": "v"} },
		"reserved header":  func(m *mailer.Message) { m.Headers = map[string]string{"bcc": "e@example.org"} },
		"reserved from":    func(m *mailer.Message) { m.Headers = map[string]string{"FROM": "e@example.org"} },
		"to with LF":       func(m *mailer.Message) { m.To = "a@example.org\nBcc: e@example.org" },
		"to with name":     func(m *mailer.Message) { m.To = "Alice <a@example.org>" },
		"two recipients":   func(m *mailer.Message) { m.To = "a@example.org, b@example.org" },
		"not an address":   func(m *mailer.Message) { m.To = "nobody" },
		"empty body":       func(m *mailer.Message) { m.Text = "" },
		"raw without body": func(m *mailer.Message) { m.Raw = []byte("Subject: x") },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			m := base
			mod(&m)
			_, err := mailer.Compose(m, from, fixedDate, "<x@y>")
			if !errors.Is(err, mailer.ErrInvalidMessage) {
				t.Fatalf("err = %v, want ErrInvalidMessage", err)
			}
		})
	}
	if _, err := mailer.Compose(base, from, fixedDate, "<x@y>\r\nBcc: e"); err == nil {
		t.Error("Message-ID with CRLF accepted")
	}
}

func TestSubjectCap(t *testing.T) {
	long := strings.Repeat("é", 500)
	raw, err := mailer.Compose(mailer.Message{To: "a@example.org", Subject: long, Text: "x"}, from, fixedDate, "<x@y>")
	if err != nil {
		t.Fatal(err)
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if n := utf8.RuneCountInString(p.Subject); n != mailer.MaxSubjectRunes {
		t.Errorf("subject has %d runes, want %d", n, mailer.MaxSubjectRunes)
	}
	if !strings.HasSuffix(p.Subject, "…") {
		t.Errorf("capped subject does not end with …: %q", p.Subject[len(p.Subject)-10:])
	}
	if s := mailer.CapSubject("  short  "); s != "short" {
		t.Errorf("CapSubject = %q", s)
	}
	exact := strings.Repeat("a", mailer.MaxSubjectRunes)
	if mailer.CapSubject(exact) != exact {
		t.Error("subject of exactly the cap was cut")
	}
}

func TestComposeRaw(t *testing.T) {
	tmpl := "Subject: Hello\nContent-Type: text/plain\n\nbody line\n"
	raw, err := mailer.Compose(mailer.Message{To: "a@example.org", Raw: []byte(tmpl)}, from, fixedDate, "<r@id.example.org>")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) {
		t.Error("raw not converted to CRLF")
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"Date": "Sun, 01 Mar 2026 12:30:00 +0000", "Message-Id": "<r@id.example.org>",
		"From": `"Herald" <herald@id.example.org>`, "To": "<a@example.org>", "Subject": "Hello"} {
		if got := p.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if p.Text != "body line\n" {
		t.Errorf("body = %q", p.Text)
	}

	// Headers already in the template are kept, not doubled.
	own := "From: Ops <ops@example.org>\r\nDate: Mon, 02 Mar 2026 00:00:00 +0000\r\nMessage-ID: <own@x>\r\nTo: a@example.org\r\nSubject: S\r\n\r\nb\r\n"
	raw, err = mailer.Compose(mailer.Message{To: "a@example.org", Raw: []byte(own)}, from, fixedDate, "<r@id.example.org>")
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != own {
		t.Errorf("complete raw message changed:\n%s", raw)
	}
}
