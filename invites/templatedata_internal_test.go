package invites

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/herald-im/herald/config"
)

// The invite templates get only the keys they read, and render exactly as
// with every key: for the embedded templates, the subject alone, and an
// operator's template that reaches request fields with {{index . "key"}}.
func TestTemplateDataHoldsWhatTheTemplatesRead(t *testing.T) {
	c := new(config.Config)
	*c = config.Default()
	c.PublicBaseURL = "https://id.example.org"
	inv := &Invite{
		ID: 7, Token: "Tok", Medium: "email", Address: "bob@example.org",
		RoomID: "!r:example.org", Sender: "@alice:example.org", RoomAlias: "#r:example.org",
		RoomName: "Room <b>", SenderDisplayName: "Alice & co", EphemeralPrivate: "cHJpdg",
		Homeserver: "example.org", Extra: map[string]json.RawMessage{"org_name": json.RawMessage(`"Acme"`)},
	}
	tm, err := loadInviteTemplates(c, "")
	if err != nil {
		t.Fatal(err)
	}
	full, err := tm.Render(templateData(c, inv, nil))
	if err != nil {
		t.Fatal(err)
	}
	part, err := tm.Render(templateData(c, inv, tm.Uses))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(full, part) {
		t.Fatalf("rendered with the keys read:\n%+v\nwith every key:\n%+v", part, full)
	}
	subject, err := tm.RenderSubject(templateData(c, inv, tm.SubjectUses))
	if err != nil || subject != full.Subject {
		t.Fatalf("subject %q, %v; want %q", subject, err, full.Subject)
	}
	if d := templateData(c, inv, tm.SubjectUses); len(d) >= len(templateData(c, inv, nil))/4 {
		t.Errorf("the subject's data has %d keys of %d: not trimmed", len(d), len(templateData(c, inv, nil)))
	}
}
