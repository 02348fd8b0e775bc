package mailer

import (
	"bytes"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// stdlibQP is what Compose wrote with mime/quotedprintable.Writer before
// appendQP replaced it: line endings made "\n", a final "\n" added when
// missing, then the Writer, closed.
func stdlibQP(s string) []byte {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	var b bytes.Buffer
	qw := quotedprintable.NewWriter(&b)
	io.WriteString(qw, s)
	qw.Close()
	return b.Bytes()
}

// FuzzWriteQPMatchesStdlib: for any text, writeQP writes exactly what
// mime/quotedprintable.Writer wrote for it (soft line breaks in the same
// places, the same bytes encoded, trailing spaces and tabs encoded, every
// line ending CRLF), after whatever is already in the buffer.
func FuzzWriteQPMatchesStdlib(f *testing.F) {
	for _, s := range qpSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b bytes.Buffer
		b.WriteString("head\r\n")
		writeQP(&b, s)
		want := append([]byte("head\r\n"), stdlibQP(s)...)
		if !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("writeQP(%q)\n got %q\nwant %q", s, b.Bytes(), want)
		}
	})
}

func qpSeeds() []string {
	seeds := []string{
		"", "\n", "\r", "\r\n", "\n\r", "\r\r\n", "\r\n\r\n", "a\rb\nc\r\nd", "a=b", "=", "==\n=",
		"trailing space \n", "trailing tab\t\n", "both \t", " ", "\t", "  \n\t\t\r\n", "end with space ",
		"Café “quoted” ünïcödé 😀\n", "\x00\x01\x7f\x80\xff", "a\r=\n", "€=€ \t\r",
		"<p>Bob invited you to <b>Tea &amp; Cake</b>. <a href=\"https://app.example.org/#/room/!abc:example.org?a=b\">Join</a></p>",
	}
	for _, n := range []int{72, 73, 74, 75, 76, 77, 78, 150, 151, 152, 300} {
		for _, tail := range []string{"", " ", "\t", "=", "é", " \n", "\t\n", "=\n", "é\n", "\r\n", "x\n", "  "} {
			for _, fill := range []string{"a", " ", "=", "é"} {
				body := strings.Repeat(fill, n)
				if len(body) > n {
					body = body[:n]
				}
				seeds = append(seeds, body+tail, body+tail+body)
			}
		}
	}
	return seeds
}

// TestWriteQPSeeds runs the fuzz seeds, plus every string of up to four
// bytes from a small alphabet, at every starting column that matters.
func TestWriteQPSeeds(t *testing.T) {
	alphabet := []string{"a", " ", "\t", "=", "\r", "\n", "\xc3\xa9"}
	var all []string
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		all = append(all, prefix)
		if depth == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, depth-1)
		}
	}
	gen("", 4)
	for _, s := range append(qpSeeds(), all...) {
		for _, pad := range []int{0, 70, 71, 72, 73, 74, 75} {
			in := strings.Repeat("x", pad) + s
			var b bytes.Buffer
			writeQP(&b, in)
			if want := stdlibQP(in); !bytes.Equal(b.Bytes(), want) {
				t.Fatalf("writeQP(%q)\n got %q\nwant %q", in, b.Bytes(), want)
			}
		}
	}
}

// TestComposeMultipartMatchesWriter: the multipart/alternative body Compose
// writes by hand is what mime/multipart.Writer wrote for the same parts.
func TestComposeMultipartMatchesWriter(t *testing.T) {
	for _, p := range [][2]string{
		{"text", "<p>html</p>"},
		{"line \nline=\r\n" + strings.Repeat("x", 80), "é\r<b>\t"},
	} {
		m := Message{To: "alice@example.org", Subject: "s", Text: p[0], HTML: p[1]}
		got, err := Compose(m, "Herald <h@id.example.org>", time.Unix(0, 0).UTC(), "<id@id.example.org>")
		if err != nil {
			t.Fatal(err)
		}
		_, body, _ := bytes.Cut(got, []byte("\r\n\r\n"))
		_, boundary, _ := strings.Cut(string(got), `boundary="`)
		boundary, _, _ = strings.Cut(boundary, `"`)
		var want bytes.Buffer
		mw := multipart.NewWriter(&want)
		if err := mw.SetBoundary(boundary); err != nil {
			t.Fatal(err)
		}
		for _, part := range []struct{ ct, body string }{
			{"text/plain; charset=utf-8", p[0]}, {"text/html; charset=utf-8", p[1]},
		} {
			h := textproto.MIMEHeader{}
			h.Set("Content-Type", part.ct)
			h.Set("Content-Transfer-Encoding", "quoted-printable")
			w, err := mw.CreatePart(h)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(stdlibQP(part.body))
		}
		mw.Close()
		want.WriteString("\r\n")
		if !bytes.Equal(body, want.Bytes()) {
			t.Fatalf("body\n got %q\nwant %q", body, want.Bytes())
		}
	}
}

// FuzzSimpleAddrSpecMatchesNetMail: an address simpleAddrSpec accepts is
// one mail.ParseAddress gives back as it is, with no display name, and
// that mail.Address.String and headerAddress write as "<addr>"; whatever
// the input, ParseRecipient and headerAddress give what net/mail gave.
func FuzzSimpleAddrSpecMatchesNetMail(f *testing.F) {
	for _, s := range []string{"alice@example.org", "a.b+c@x.y", "a..b@x", ".a@x", "a.@x", "a@b@c", "@x", "a@",
		"a@.x", "a@x.", "a b@x", `"a"@x`, "a@[1.2.3.4]", "ü@x", "a@ü", "Alice <a@x>", "a@x (c)", " a@x ", "!#$%&'*+-/=?^_`{|}~@x",
		"a(b)@x", "a\\b@x", "a,b@x", "a;b@x", "a:b@x", "a@x\x00", "a@xn--mnchen-3ya.de", "a\x7f@x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if simpleAddrSpec(s) {
			a, err := mail.ParseAddress(s)
			if err != nil || a.Name != "" || a.Address != s {
				t.Fatalf("simpleAddrSpec(%q) but ParseAddress gives %+v, %v", s, a, err)
			}
			if got := (&mail.Address{Address: s}).String(); got != "<"+s+">" {
				t.Fatalf("Address{%q}.String() = %q", s, got)
			}
		}
		// ParseRecipient as it was, with net/mail alone.
		var want string
		var wantErr bool
		addr := strings.TrimSpace(s)
		if CheckHeaderValue(addr) != nil {
			wantErr = true
		} else if a, err := mail.ParseAddress(addr); err != nil || a.Name != "" || a.Address != addr {
			wantErr = true
		} else {
			want = addr
		}
		got, err := ParseRecipient(s)
		if got != want || (err != nil) != wantErr {
			t.Fatalf("ParseRecipient(%q) = %q, %v; want %q (error %v)", s, got, err, want, wantErr)
		}
		// headerAddress as it was.
		wantH := addr
		if e, utf8, err := EnvelopeAddress(addr); err == nil && !utf8 {
			wantH = e
		}
		wantH = (&mail.Address{Address: wantH}).String()
		if got := headerAddress(s); got != wantH {
			t.Fatalf("headerAddress(%q) = %q, want %q", s, got, wantH)
		}
	})
}

// TestComposeFromIsParsedPerAddress: Compose remembers the last From it
// parsed, and a different From is parsed anew.
func TestComposeFromIsParsedPerAddress(t *testing.T) {
	m := Message{To: "bob@example.org", Subject: "s", Text: "t"}
	for _, c := range []struct{ from, want string }{
		{"Herald <h@a.example>", `From: "Herald" <h@a.example>`},
		{"h@b.example", "From: <h@b.example>"},
		{"Herald <h@a.example>", `From: "Herald" <h@a.example>`},
	} {
		raw, err := Compose(m, c.from, time.Unix(0, 0).UTC(), "<x@y>")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte("\r\n"+c.want+"\r\n")) {
			t.Fatalf("from %q: no %q in\n%s", c.from, c.want, raw)
		}
	}
	if _, err := Compose(m, "not an address", time.Unix(0, 0).UTC(), "<x@y>"); err == nil {
		t.Fatal("a bad From is accepted")
	}
}
