package mailer_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/herald-im/herald/mailer"
)

var defaults = fstest.MapFS{
	"invite.subject.txt": {Data: []byte("{{.SenderName}} invited you to {{.RoomName}}\n")},
	"invite.txt":         {Data: []byte("Hi,\n{{.SenderName}} invited you to {{.RoomName}}.\nJoin: {{.Link}}?room={{urlquery .RoomName}}\n")},
	"invite.html":        {Data: []byte(`<p>{{.SenderName}} invited you to <b>{{.RoomName}}</b>. <a href="{{.Link}}">Join</a></p>`)},
}

type inviteData struct {
	SenderName, RoomName, Link string
}

func TestTemplatesDefaults(t *testing.T) {
	tm, err := mailer.LoadTemplates(defaults, "", "invite")
	if err != nil {
		t.Fatal(err)
	}
	if tm.IsRaw() || strings.Join(tm.Files(), ",") != "embedded:invite.subject.txt,embedded:invite.txt,embedded:invite.html" {
		t.Errorf("files = %v", tm.Files())
	}
	m, err := tm.Render(inviteData{SenderName: "Bob <script>", RoomName: "Tea & Cake", Link: "https://app.example.org/#/room"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != "invite" || m.Subject != "Bob <script> invited you to Tea & Cake" {
		t.Errorf("subject = %q kind %q", m.Subject, m.Kind)
	}
	if !strings.Contains(m.Text, "room=Tea+%26+Cake") {
		t.Errorf("text = %q", m.Text)
	}
	if !strings.Contains(m.HTML, "Bob &lt;script&gt;") || !strings.Contains(m.HTML, "Tea &amp; Cake") {
		t.Errorf("HTML not escaped: %q", m.HTML)
	}
	if err := tm.Check(inviteData{}); err != nil {
		t.Errorf("Check: %v", err)
	}
	// A value with a line break cannot reach the Subject header.
	if _, err := tm.Render(inviteData{SenderName: "Bob\r\nBcc: evil@example.org"}); err == nil {
		t.Error("subject with CRLF rendered")
	}
}

func TestTemplatesOverrideDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "invite.subject.txt"), []byte("Operator: {{.RoomName}}"), 0o600)
	tm, err := mailer.LoadTemplates(defaults, dir, "invite")
	if err != nil {
		t.Fatal(err)
	}
	files := tm.Files()
	if files[0] != filepath.Join(dir, "invite.subject.txt") || files[1] != "embedded:invite.txt" {
		t.Errorf("files = %v", files)
	}
	m, err := tm.Render(map[string]any{"SenderName": "Bob", "RoomName": "Tea", "Link": "https://x.example"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "Operator: Tea" || !strings.Contains(m.Text, "Bob invited you") {
		t.Errorf("m = %+v", m)
	}
	// Missing map keys are errors, so Check catches a misspelt variable.
	os.WriteFile(filepath.Join(dir, "invite.txt"), []byte("{{.room_nmae}}"), 0o600)
	tm, err = mailer.LoadTemplates(defaults, dir, "invite")
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.Check(map[string]any{"SenderName": "Bob", "RoomName": "Tea", "Link": "x"}); err == nil || !strings.Contains(err.Error(), "room_nmae") {
		t.Errorf("Check = %v, want an error naming room_nmae", err)
	}
}

func TestTemplatesBrokenIsAnErrorNamingTheFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "invite.html")
	os.WriteFile(p, []byte("<p>{{.RoomName</p>"), 0o600)
	_, err := mailer.LoadTemplates(defaults, dir, "invite")
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want one naming %s", err, p)
	}
	broken := fstest.MapFS{"invite.subject.txt": {Data: []byte("{{if}}")}, "invite.txt": {Data: []byte("x")}}
	if _, err := mailer.LoadTemplates(broken, "", "invite"); err == nil || !strings.Contains(err.Error(), "invite.subject.txt") {
		t.Fatalf("err = %v", err)
	}
	if _, err := mailer.LoadTemplates(fstest.MapFS{}, "", "invite"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing templates: %v", err)
	}
}

func TestTemplatesRawEml(t *testing.T) {
	dir := t.TempDir()
	eml := `Subject: {{encodeHeader .room_name}}
Content-Type: text/plain; charset=utf-8
X-Room: {{header .room_name}}

{{.sender_display_name}} invited you. {{.web_client_location}}/#/room/{{urlquery .room_id}}
`
	os.WriteFile(filepath.Join(dir, "invite.eml"), []byte(eml), 0o600)
	tm, err := mailer.LoadTemplates(defaults, dir, "invite")
	if err != nil {
		t.Fatal(err)
	}
	if !tm.IsRaw() || len(tm.Files()) != 1 {
		t.Fatalf("raw = %v files %v", tm.IsRaw(), tm.Files())
	}
	data := map[string]any{"room_name": "Café", "sender_display_name": "Bob", "web_client_location": "https://app.example", "room_id": "!r:x"}
	m, err := tm.Render(data)
	if err != nil {
		t.Fatal(err)
	}
	m.To = "a@example.org"
	raw, err := mailer.Compose(m, from, fixedDate, "<e@x>")
	if err != nil {
		t.Fatal(err)
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if p.Subject != "Café" || p.Header.Get("X-Room") != "Café" || p.Header.Get("Message-Id") != "<e@x>" {
		t.Errorf("headers = %v subject %q", p.Header, p.Subject)
	}
	if p.Text != "Bob invited you. https://app.example/#/room/%21r%3Ax\n" {
		t.Errorf("body = %q", p.Text)
	}
	data["room_name"] = "x\nBcc: evil@example.org"
	if _, err := tm.Render(data); err == nil || !strings.Contains(err.Error(), "line break") {
		t.Errorf("header injection rendered: %v", err)
	}
	if err := tm.Check(data); err == nil {
		t.Error("Check accepted a header injection")
	}
}

func TestTemplatesTruncate(t *testing.T) {
	fs := fstest.MapFS{"v.subject.txt": {Data: []byte(`{{truncate 5 .}}`)}, "v.txt": {Data: []byte(`{{lower .}} {{upper .}}`)}}
	tm, err := mailer.LoadTemplates(fs, "", "v")
	if err != nil {
		t.Fatal(err)
	}
	m, err := tm.Render("Éléphant")
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "Élép…" || m.Text != "éléphant ÉLÉPHANT" {
		t.Errorf("m = %+v", m)
	}
}
