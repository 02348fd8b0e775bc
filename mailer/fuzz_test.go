package mailer_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/herald-im/herald/mailer"
)

// FuzzCompose: whatever the subject, bodies and extra header value, Compose
// either refuses with ErrInvalidMessage or produces a CRLF-only message that
// parses back to the same subject (capped) and bodies, with exactly the
// header fields it was asked for (no injected field).
func FuzzCompose(f *testing.F) {
	f.Add("Hello", "text", "<p>html</p>", "<mailto:u@x>")
	f.Add("Café “quoted” "+strings.Repeat("long ", 60), "line\r\nline\rline\n.\n..", "", "é")
	f.Add("x\r\nBcc: e@x", "a", "b", "c")
	f.Add("ok", "a", "b", "v\nBcc: e@x")
	f.Add("=?utf-8?q?x?=", "=3D", "=\r\n", "")
	f.Fuzz(func(t *testing.T, subject, text, html, hv string) {
		m := mailer.Message{To: "a@example.org", Subject: subject, Text: text, HTML: html,
			Headers: map[string]string{"X-Extra": hv}}
		raw, err := mailer.Compose(m, "Herald <h@id.example.org>", fixedDate, "<f@id.example.org>")
		if err != nil {
			if !errors.Is(err, mailer.ErrInvalidMessage) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) || bytes.Count(raw, []byte("\r")) != bytes.Count(raw, []byte("\r\n")) {
			t.Fatal("bare CR or LF in output")
		}
		p, err := mailer.Parse(raw)
		if err != nil {
			t.Fatalf("output does not parse: %v\n%s", err, raw)
		}
		if len(p.Header) != 8 && len(p.Header) != 9 {
			t.Fatalf("%d header fields: %v", len(p.Header), p.Header)
		}
		if p.Subject != mailer.CapSubject(subject) {
			t.Fatalf("subject %q, want %q", p.Subject, mailer.CapSubject(subject))
		}
		norm := func(s string) string {
			s = strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
			if !strings.HasSuffix(s, "\n") {
				s += "\n"
			}
			return s
		}
		if text != "" && p.Text != norm(text) {
			t.Fatalf("text %q, want %q", p.Text, norm(text))
		}
		if html != "" && p.HTML != norm(html) {
			t.Fatalf("html %q, want %q", p.HTML, norm(html))
		}
	})
}
