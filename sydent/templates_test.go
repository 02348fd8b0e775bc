package sydent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/sydent"
)

// convertTestTemplates converts testdata/templates (a legacy brand and a
// Jinja2 brand, the latter sydent's default) into a fresh directory.
func convertTestTemplates(t *testing.T) (string, *sydent.Conversion) {
	t.Helper()
	dst := t.TempDir()
	conv, err := sydent.ConvertTemplates("testdata/templates", dst, &sydent.Config{DefaultBrand: "jinja", Values: map[string]string{}})
	if err != nil {
		t.Fatalf("%v\n%s", err, conv)
	}
	return dst, conv
}

// waitMail waits for the n-th mail (1-based) the SMTP server accepted.
func waitMail(t *testing.T, s *smtptest.Server, n int) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := s.Messages(); len(m) >= n {
			return m[n-1].Data
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("mail %d did not arrive", n)
	return nil
}

// compareWithSydent checks Herald's mail against what sydent renders from
// the same template (testdata/templates/expected, made by render_sydent.py):
// the same To, the same decoded Subject and byte-for-byte the same body,
// once the values that are random per mail are replaced by the placeholders
// the expected output was rendered with.
func compareWithSydent(t *testing.T, got []byte, expectedFile string, placeholders map[string]string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata/templates/expected", expectedFile))
	if err != nil {
		t.Fatal(err)
	}
	got = bytes.ReplaceAll(got, []byte("\r\n"), []byte("\n"))
	gm, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("Herald's mail: %v\n%s", err, got)
	}
	wm, err := mail.ReadMessage(bytes.NewReader(want))
	if err != nil {
		t.Fatalf("expected mail: %v", err)
	}
	dec := &mime.WordDecoder{CharsetReader: func(charset string, in io.Reader) (io.Reader, error) {
		if strings.EqualFold(charset, "utf8") { // Python's Header(..., "utf8")
			return in, nil
		}
		return nil, fmt.Errorf("charset %s", charset)
	}}
	gs, _ := dec.DecodeHeader(gm.Header.Get("Subject"))
	ws, _ := dec.DecodeHeader(wm.Header.Get("Subject"))
	if gs != ws || gm.Header.Get("To") != wm.Header.Get("To") {
		t.Errorf("headers: Subject %q To %q, sydent %q %q", gs, gm.Header.Get("To"), ws, wm.Header.Get("To"))
	}
	if gct, wct := gm.Header.Get("Content-Type"), wm.Header.Get("Content-Type"); !strings.Contains(gct, "herald-") && gct != wct {
		t.Errorf("Content-Type %q, sydent %q", gct, wct)
	}
	gb, _ := readAll(gm)
	wb, _ := readAll(wm)
	body := regexp.MustCompile(`herald-[0-9a-f]{24}`).ReplaceAllString(string(gb), "BOUNDARY")
	for real, ph := range placeholders {
		body = strings.ReplaceAll(body, real, ph)
	}
	if strings.TrimRight(body, "\n") != strings.TrimRight(string(wb), "\n") {
		t.Errorf("body differs from sydent's\n--- Herald\n%s\n--- sydent\n%s", body, wb)
	}
}

func readAll(m *mail.Message) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(m.Body)
	return b.Bytes(), err
}

// TestConvertedTemplatesRenderAsSydent: sydent's legacy %(x)s templates and
// its Jinja2 templates, converted, give the mail sydent gave (invite and
// validation), through the whole Herald stack.
func TestConvertedTemplatesRenderAsSydent(t *testing.T) {
	dst, conv := convertTestTemplates(t)
	t.Logf("%s", conv)
	again, err := sydent.ConvertTemplates("testdata/templates", dst, &sydent.Config{DefaultBrand: "jinja", Values: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range again.Files {
		if f.Changed {
			t.Errorf("a second conversion rewrote %s", f.To)
		}
	}
	for _, brand := range []string{"legacy", "jinja"} {
		t.Run(brand, func(t *testing.T) {
			smtp := smtptest.Start(t, smtptest.Options{})
			env := testenv.Start(t, func(c *config.Config) {
				c.SMTP.Host, c.SMTP.Port = smtp.Host, smtp.Port
				c.Email.TemplatesDir = filepath.Join(dst, brand)
				c.Email.WebClientURL = "https://chat.example.com"
			})
			tok := env.Register(t, "@alice:hs.test")
			status, body := env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
				"medium": "email", "address": "invitee@example.org", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
				"room_name": "Kitchen & <Table>/2", "room_alias": "#kitchen:hs.test", "sender_display_name": `Alice "A" O'Neil`,
				"room_avatar_url": "", "room_join_rules": "", "sender_avatar_url": "",
			}, tok)
			if status != 200 {
				t.Fatalf("store-invite: %d %s", status, body)
			}
			var ans struct{ Token string }
			_ = json.Unmarshal(body, &ans)
			inv, err := env.App.Invites().ByToken(ans.Token)
			if err != nil {
				t.Fatal(err)
			}
			key := inv.EphemeralPrivate
			compareWithSydent(t, waitMail(t, smtp, 1), brand+"_invite_template.eml"+map[string]string{"legacy": "", "jinja": ".j2"}[brand],
				map[string]string{ans.Token: "TOKEN", pyQuote(key): "KEY%2B/%3D"})
		})
	}
	for _, v := range []struct{ name, query, expected string }{
		{"validation", "", "jinja_verification_template.eml.j2"},                   // the default brand, at the top
		{"validation-legacy", "?brand=legacy", "legacy_verification_template.eml"}, // a brand picked by the request
	} {
		t.Run(v.name, func(t *testing.T) {
			smtp := smtptest.Start(t, smtptest.Options{})
			env := testenv.Start(t, func(c *config.Config) {
				c.SMTP.Host, c.SMTP.Port = smtp.Host, smtp.Port
				c.Email.TemplatesDir = dst
			})
			tok := env.Register(t, "@bob:hs.test")
			status, body := env.Do(t, "POST", "/_matrix/identity/v2/validate/email/requestToken"+v.query, map[string]any{
				"client_secret": "s3cret", "email": "user@example.org", "send_attempt": 1,
			}, tok)
			if status != 200 {
				t.Fatalf("requestToken: %d %s", status, body)
			}
			raw := string(waitMail(t, smtp, 1))
			link := regexp.MustCompile(`https?://[^\s(,]*submitToken[^\s(,]*`).FindString(raw)
			code := regexp.MustCompile(`(?i)the code is (\S+)\.`).FindStringSubmatch(raw)
			if link == "" || code == nil {
				t.Fatalf("no link or code in\n%s", raw)
			}
			compareWithSydent(t, []byte(raw), v.expected, map[string]string{
				link: "https://id.example/link?a=1&b=2", strings.ReplaceAll(link, "&", "&amp;"): "https://id.example/link?a=1&amp;b=2",
				"is " + code[1] + ".": "is CODE.",
			})
		})
	}
}

// pyQuote is Python's urllib.parse.quote, as the templates' pyquote.
func pyQuote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

// TestConversionNamesWhatItCannotConvert: a construct the converter does
// not handle is named (file, line, construct) and left in place, and
// Herald then refuses to start with that template, naming it.
func TestConversionNamesWhatItCannotConvert(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "invite_template.eml.j2"), []byte(
		"To: {{ to }}\nSubject: hi\n\nHello {{ sender|title }}\n{% for x in y %}{{ x }}{% endfor %}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	conv, err := sydent.ConvertTemplates(src, dst, &sydent.Config{Values: map[string]string{}})
	if !errors.Is(err, sydent.ErrUnconverted) {
		t.Fatalf("err %v, want ErrUnconverted", err)
	}
	report := conv.String()
	for _, want := range []string{"line 4: {{ sender|title }}", "line 5: {% for x in y %}", "line 5: {% endfor %}"} {
		if !strings.Contains(report, want) {
			t.Errorf("report does not name %q:\n%s", want, report)
		}
	}
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Email.TemplatesDir = dst
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	_, err = server.New(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
	if err == nil || !strings.Contains(err.Error(), "sydent template syntax") || !strings.Contains(err.Error(), "invite.eml line") {
		t.Fatalf("Herald started with an unconverted template: %v", err)
	}
}

// TestHeraldRefusesSydentTemplates: a sydent template copied into
// email.templates_dir unconverted stops start-up with one line naming the
// file, line and construct (it used to mail "%(token)s" literally).
func TestHeraldRefusesSydentTemplates(t *testing.T) {
	for name, src := range map[string]string{
		"invite.eml":         "To: %(to)s\nSubject: x\n\nJoin with %(token)s\n",
		"invite.txt":         "Join with {% if token %}{{.token}}{% endif %}\n",
		"invite.subject.txt": "%(sender_display_name)s invited you\n",
		"validation.eml":     "To: {{.to}}\nSubject: x\n\n{# code #}{{.token}}\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := config.Default()
			cfg.DataDir = t.TempDir()
			cfg.Email.TemplatesDir = dir
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			_, err := server.New(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
			if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "sydent template syntax") {
				t.Fatalf("start-up with %s: %v", name, err)
			}
		})
	}
}

// TestBrandSelectsTemplates: as in sydent, ?brand= on store-invite picks
// the brand's converted templates, and no brand or an unknown one gets
// email.default_brand's (or, unset, those at the top of templates_dir,
// which the conversion fills with sydent's default brand).
func TestBrandSelectsTemplates(t *testing.T) {
	dst, _ := convertTestTemplates(t) // brands "legacy" and "jinja"; sydent's default: jinja
	for _, c := range []struct {
		defaultBrand, query, want string
	}{
		{"", "", "Hi,"},
		{"", "?brand=legacy", "Hello,"},
		{"", "?brand=jinja", "Hi,"},
		{"", "?brand=nosuchbrand", "Hi,"},
		{"", "?brand=..%2Flegacy", "Hi,"},
		{"legacy", "", "Hello,"},
		{"legacy", "?brand=jinja", "Hi,"},
	} {
		t.Run(c.defaultBrand+c.query, func(t *testing.T) {
			smtp := smtptest.Start(t, smtptest.Options{})
			env := testenv.Start(t, func(cfg *config.Config) {
				cfg.SMTP.Host, cfg.SMTP.Port = smtp.Host, smtp.Port
				cfg.Email.TemplatesDir = dst
				cfg.Email.DefaultBrand = c.defaultBrand
			})
			tok := env.Register(t, "@alice:hs.test")
			status, body := env.Do(t, "POST", "/_matrix/identity/v2/store-invite"+c.query, map[string]any{
				"medium": "email", "address": "invitee@example.org", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
			}, tok)
			if status != 200 {
				t.Fatalf("store-invite: %d %s", status, body)
			}
			raw := string(waitMail(t, smtp, 1))
			if !strings.Contains(raw, "\r\n"+c.want+"\r\n") {
				t.Errorf("mail is not the expected brand's (want %q):\n%s", c.want, raw)
			}
		})
	}
}

func TestDefaultBrandValidation(t *testing.T) {
	dst, _ := convertTestTemplates(t)
	for brand, want := range map[string]string{
		"nosuch":    "email.default_brand",
		"../legacy": "email.default_brand",
		"legacy":    "",
	} {
		c := config.Default()
		c.DataDir = t.TempDir()
		c.Email.TemplatesDir = dst
		c.Email.DefaultBrand = brand
		err := c.Validate()
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("default_brand %q: %v", brand, err)
		}
	}
}
