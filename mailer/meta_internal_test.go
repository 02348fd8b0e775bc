package mailer

import (
	"encoding/json"
	"testing"
)

// decodeMeta's fast path reads what encodeMeta writes as encoding/json
// does, and declines anything else.
func TestDecodeMetaFastAgrees(t *testing.T) {
	for _, md := range []meta{
		{},
		{To: "alice@example.org", Subject: "Alice invited you to Tea & Cake <3", Ref: "invite:12", MessageID: "<a1@id.example.org>"},
		{To: "b@example.org", MessageID: "<x@y>"},
		{Subject: "quote \" backslash \\ tab \t line\u2028 é ☕"},
		{Ref: "invite:1", Subject: "bad \xff utf-8"},
	} {
		b, err := encodeMeta(md)
		if err != nil {
			t.Fatal(err)
		}
		checkMetaAgrees(t, b)
		if _, ok := decodeMetaFast(b); !ok && md.To == "alice@example.org" {
			t.Errorf("%s: an invite mail's meta not read by the fast path", b)
		}
		if got := decodeMeta(b); got.To != md.To || got.Ref != md.Ref || got.MessageID != md.MessageID {
			t.Errorf("%s: read %+v", b, got)
		}
	}
	for _, b := range []string{`{"to":"a@b","subject":"s"}`, `{"t":"a","t":"b"}`, `{"s":"a","t":"b"}`, `{"t":"a",}`,
		`{"t":"a" }`, `{"x":"a"}`, `{"t":1}`, `{"t":"a"`, `[]`, ``, `{"t":"\u0041"}`, `{"m":"x","r":"y"}`} {
		checkMetaAgrees(t, []byte(b))
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(`{"t":"alice@example.org","s":"Hello","r":"invite:1","m":"<a@b>"}`)
	f.Add(`{"s":"x\"y"}`)
	f.Fuzz(func(t *testing.T, b string) { checkMetaAgrees(t, []byte(b)) })
}

func checkMetaAgrees(t *testing.T, b []byte) {
	t.Helper()
	fast, ok := decodeMetaFast(b)
	if !ok {
		return
	}
	var s storedMeta
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%q: fast path read %+v, encoding/json refuses it: %v", b, fast, err)
	}
	if want := (meta{To: s.T, Subject: s.S, Ref: s.R, MessageID: s.M}); fast != want || s.To != "" || s.Subject != "" || s.Ref != "" || s.MessageID != "" {
		t.Fatalf("%q: fast path %+v, encoding/json %+v", b, fast, s)
	}
}
