package invites_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var goldenDate = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func goldenInvite() *invites.Invite {
	return &invites.Invite{
		ID: 42, Token: "GoldenTokenGoldenTokenGoldenTokenGoldenTok", Medium: "email", Address: "invitee@example.org",
		RoomID: "!room:hs.test", Sender: "@alice:hs.test", RoomAlias: "#tea:hs.test", RoomName: "Tea & Cake",
		RoomAvatarURL: "mxc://hs.test/avatar", RoomJoinRules: "invite", SenderDisplayName: "Alice",
		SenderAvatarURL: "mxc://hs.test/alice", EphemeralPrivate: "n+Fq/golden/seed+base64AAAAAAAAAAAAAAAAAAAA",
		Homeserver: "hs.test", Created: goldenDate, State: invites.StatePending,
	}
}

func TestGoldenEmails(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.PublicBaseURL = "https://id.example.org"
		c.Email.BrandName = "Example ID"
	})
	hostile := goldenInvite()
	hostile.RoomName = "<script>alert(1)</script>\r\nBcc: victim@example.org"
	hostile.SenderDisplayName = "Eve \"the admin\" <eve@evil.example>\n\nClick here"
	hostile.WebClientLocation = "https://evil.example/phish"
	space := goldenInvite()
	space.RoomName, space.RoomAlias, space.SenderDisplayName, space.RoomType = "", "", "", "m.space"
	allowed := goldenInvite()
	allowed.WebClientLocation = "https://chat.example.org/"
	allowed.RoomName = "Ünïcödé 日本語 room"

	for name, inv := range map[string]*invites.Invite{"basic": goldenInvite(), "hostile": hostile, "space_no_names": space, "allowlisted_client": allowed} {
		t.Run(name, func(t *testing.T) {
			m, err := e.App.Invites().RenderMail(inv)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := mailer.Compose(m, "Example ID <id@example.org>", goldenDate, "<golden-"+name+"@example.org>")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "invite_"+name+".eml"), raw)
			p, err := mailer.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(p.HTML, "<script>") || strings.Contains(string(raw), "\r\nBcc:") {
				t.Error("hostile values reached the mail unescaped")
			}
			if strings.Contains(string(raw), "evil.example/phish") {
				t.Error("the inviter's web client reached the mail")
			}
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the rendered mail (run go test -update after checking):\n--- got ---\n%s", path, got)
	}
}

// An operator's sydent-style complete message template, with sydent's
// variable names, replaces the embedded ones.
func TestOperatorRawTemplate(t *testing.T) {
	dir := t.TempDir()
	eml := "Subject: {{encodeHeader .sender_display_name}} invited you {{header .bracketed_room_name}}\n" +
		"Content-Type: text/plain; charset=utf-8\n\n" +
		"Token {{.token}} key {{.ephemeral_private_key}} for {{.to}} in {{.room_name}} via {{.web_client_location}}\n" +
		"{{.bracketed_verified_sender}} {{.room_alias}} {{.room_avatar_url}} {{.sender_avatar_url}} {{.room_type}}\n" +
		"html-escaped {{.room_name_forhtml}} url {{.room_name_forurl}} extra {{index . \"custom\"}}\n"
	os.WriteFile(filepath.Join(dir, "invite.eml"), []byte(eml), 0o600)
	e := start(t, func(c *config.Config) { c.Email.TemplatesDir = dir })
	if files := e.App.Invites().TemplateFiles(); len(files) != 1 || !strings.HasSuffix(files[0], "invite.eml") {
		t.Errorf("template files %v", files)
	}
	tok := e.register(t, alice)
	body := inviteBody(alice, "raw@example.org")
	body["custom"] = "value"
	a := e.storeInvite(t, tok, body)
	p, _ := e.waitMail(t, 1)
	inv, _ := e.App.Invites().ByToken(a.Token)
	if p.Subject != "Alice <A> invited you (Tea & Cake)" {
		t.Errorf("subject %q", p.Subject)
	}
	for _, want := range []string{"Token " + a.Token, "key " + inv.EphemeralPrivate, "for raw@example.org in Tea & Cake via https://app.element.io",
		"Alice <A> (@alice:hs.test) #tea:hs.test mxc://hs.test/avatar", "html-escaped Tea &amp; Cake url Tea+%26+Cake extra value"} {
		if !strings.Contains(p.Text, want) {
			t.Errorf("mail lacks %q:\n%s", want, p.Text)
		}
	}
}

func TestBrokenTemplateStopsStartup(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"syntax":     {"invite.subject.txt": "{{.room_name"},
		"misspelt":   {"invite.txt": "Hello {{.no_such_variable}}"},
		"raw header": {"invite.eml": "no header block"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			var first string
			for f, src := range files {
				os.WriteFile(filepath.Join(dir, f), []byte(src), 0o600)
				first = f
			}
			cfg := config.Default()
			cfg.DataDir = t.TempDir()
			cfg.Email.TemplatesDir = dir
			a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
			if err == nil {
				a.Close()
				t.Fatal("server.New accepted a broken template")
			}
			if !strings.Contains(err.Error(), first) && !strings.Contains(err.Error(), strings.TrimSuffix(first, ".txt")) {
				t.Errorf("error does not name the template: %v", err)
			}
		})
	}
}

// The stored Extra keys survive a round trip through JSON.
func TestInviteJSONRoundTrip(t *testing.T) {
	inv := goldenInvite()
	inv.Extra = map[string]json.RawMessage{"x": json.RawMessage(`{"a":1}`)}
	raw, _ := json.Marshal(inv)
	var back invites.Invite
	if err := json.Unmarshal(raw, &back); err != nil || string(back.Extra["x"]) != `{"a":1}` || !back.Created.Equal(inv.Created) {
		t.Errorf("round trip: %+v %v", back, err)
	}
}

// With no smtp.host, the startup log names the dev mailbox (directory and
// page), and an invite's mail lands there as an .eml file a newcomer can read.
func TestDevMailboxNamedInStartupLog(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) {
		c.SMTP.Host = ""
		c.Invites.RateLimits.Sender.PerHour = 0
	})
	// On PostgreSQL the mailbox is the dev_mailbox table, which every
	// replica shares: no directory to name.
	onBolt := e.App.DB().Backend() == store.BackendBolt
	dir := filepath.Join(e.App.Config().DataDir, mailer.DevMailboxDir)
	logs := e.Logs()
	if !strings.Contains(logs, "dev mailbox") || (onBolt && !strings.Contains(logs, dir)) ||
		!strings.Contains(logs, e.App.Config().BaseURL()+"/admin/mailbox") || !strings.Contains(logs, "herald admin create") {
		t.Fatalf("startup log does not name the dev mailbox %s:\n%s", dir, logs)
	}
	tok := e.Register(t, alice)
	e.AcceptTerms(t, tok)
	if status, raw := e.Do(t, "POST", "/_matrix/identity/v2/store-invite", inviteBody(alice, "dev@example.org"), tok); status != 200 {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mails, _ := e.App.Mailbox().List()
		if len(mails) == 1 {
			raw, err := e.App.Mailbox().Read(mails[0].Name)
			if p, perr := mailer.Parse(raw); err != nil || perr != nil || !strings.Contains(p.Subject, "Tea & Cake") {
				t.Errorf("dev mail %s: %v %v", mails[0].Name, err, perr)
			}
			if onBolt {
				// An .eml file a newcomer can read.
				if _, err := os.Stat(filepath.Join(dir, mails[0].Name)); err != nil || !strings.HasSuffix(mails[0].Name, ".eml") {
					t.Errorf("dev mailbox file: %v", err)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mail in the dev mailbox (found %v)", mails)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(e.Logs(), "dev@example.org") {
		t.Error("the address was logged in clear")
	}
}

// The inviter's org.matrix.web_client_location is used only when its origin
// (scheme, host and port) is on email.web_client_allowlist; look-alikes fall
// back to email.web_client_url.
func TestWebClientAllowlistOrigins(t *testing.T) {
	e := start(t) // allowlist: https://chat.example.org; default https://app.element.io
	for loc, want := range map[string]string{
		"https://chat.example.org/element/":              "https://chat.example.org/element/#/room/",
		"https://CHAT.example.org":                       "https://CHAT.example.org/#/room/",
		"https://chat.example.org.evil.example/":         "https://app.element.io/#/room/",
		"https://chat.example.org@evil.example/":         "https://app.element.io/#/room/",
		"https://evil.example/?https://chat.example.org": "https://app.element.io/#/room/",
		"http://chat.example.org/":                       "https://app.element.io/#/room/",
		"https://chat.example.org:8443/":                 "https://app.element.io/#/room/",
		"javascript:alert(1)//chat.example.org":          "https://app.element.io/#/room/",
		"//chat.example.org/":                            "https://app.element.io/#/room/",
	} {
		inv := goldenInvite()
		inv.WebClientLocation = loc
		m, err := e.App.Invites().RenderMail(inv)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m.Text, "\n"+want) {
			t.Errorf("web_client_location %q: join link is not %s...:\n%s", loc, want, m.Text)
		}
	}
}
