package mailer

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/queue"
)

// Mail queued with formatDeflateDictV1 is read with dictV1: changing the
// file would make every such mail unreadable. A new dictionary is a new
// format byte and a new file.
func TestMailDictionaryNeverChanges(t *testing.T) {
	sum := sha256.Sum256(dictV1)
	if got := hex.EncodeToString(sum[:]); got != "a2ddf22554b660f3e29836eb413e8e45fb592134753c5d5c4cb3cb6fb02b0236" {
		t.Fatalf("dict/v1.eml changed (sha256 %s): stored mail would no longer decompress", got)
	}
}

// pack writes formatDeflateDictV1; unpack reads it and the plain DEFLATE of
// mail queued before the dictionary.
func TestPackRoundTripsAndReadsTheOlderFormat(t *testing.T) {
	raw := []byte(strings.ReplaceAll(string(dictV1), "someone@example.org", "carol@example.net"))
	packed, err := pack(raw)
	if err != nil {
		t.Fatal(err)
	}
	if packed[0] != formatDeflateDictV1 {
		t.Fatalf("format %d", packed[0])
	}
	got, err := unpack(packed)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("round trip: %v", err)
	}

	var old bytes.Buffer
	old.WriteByte(formatDeflate)
	w, _ := flate.NewWriter(&old, flate.DefaultCompression)
	w.Write(raw)
	w.Close()
	if got, err := unpack(old.Bytes()); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("format 1: %v", err)
	}
	if len(packed) >= old.Len()/2 {
		t.Fatalf("the dictionary should at least halve an invite mail: %d bytes, %d without", len(packed), old.Len())
	}
	if _, err := unpack([]byte{9, 1, 2}); err == nil {
		t.Fatal("an unknown format must be an error")
	}
}

// Meta is written with one-letter keys; meta written before, with the long
// names, still reads the same.
func TestMetaReadsBothForms(t *testing.T) {
	want := meta{To: "carol@example.net", Subject: "Hi", Ref: "invite:7", MessageID: "<x@example.org>"}
	b, err := encodeMeta(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := decodeMeta(b); got != want {
		t.Fatalf("one-letter keys: %+v", got)
	}
	if !strings.HasPrefix(string(b), `{"t":`) {
		t.Fatalf("stored as %s", b)
	}
	old := []byte(`{"to":"carol@example.net","subject":"Hi","ref":"invite:7","message_id":"<x@example.org>"}`)
	if got := decodeMeta(old); got != want {
		t.Fatalf("long names: %+v", got)
	}
	if len(b) >= len(old) {
		t.Fatalf("one-letter keys not shorter: %d >= %d", len(b), len(old))
	}
}

func TestMailDictionaryV2NeverChanges(t *testing.T) {
	sum := sha256.Sum256(dictV2)
	if got := hex.EncodeToString(sum[:]); got != "56800578a26a71dacea240427ac0dd44d5bf44c7a30656457fb97f066a4dca37" {
		t.Fatalf("dict/v2.txt changed (sha256 %s): stored mail would no longer decompress", got)
	}
}

// A mail stored as Compose's inputs (format 3) composes again to the very
// bytes composed when it was queued: headers, zones other than UTC,
// non-ASCII subjects, text or HTML alone.
func TestPackMessageComposesTheSameBytes(t *testing.T) {
	zone := time.FixedZone("X", -(7*3600 + 30*60))
	msgs := []struct {
		m    Message
		date time.Time
	}{
		{Message{To: "carol@example.net", Subject: "Alice invited you to Tea & Cake", Text: "Hi,\nhttps://x.test/?token=abc\n",
			HTML:    "<p>Hi, <a href=\"https://x.test/?token=abc\">join</a></p>" + strings.Repeat("é long line ", 30),
			Headers: map[string]string{"List-Unsubscribe": "<https://x.test/optout?token=abc>", "Auto-Submitted": "auto-generated", "X-Auto-Response-Suppress": "All"}},
			time.Date(2026, 3, 14, 15, 9, 26, 123456789, time.UTC)},
		{Message{To: "bob@example.org", Subject: "Vérifiez votre adresse — 123456", Text: "code 123456"},
			time.Date(2026, 11, 29, 22, 0, 0, 0, zone)},
		{Message{To: "dan@example.org", Subject: "html", HTML: "<b>only</b>"}, time.Unix(0, 0)},
		{Message{To: "eve@example.org", Subject: strings.Repeat("a long subject ", 20), Text: "capped"}, time.Unix(1, 0)},
	}
	for i, c := range msgs {
		const from = `"Herald" <herald@herald.test>`
		mid := NewMessageID(from)
		want, err := Compose(c.m, from, c.date, mid)
		if err != nil {
			t.Fatal(err)
		}
		packed, err := packMessage(c.m, from, c.date)
		if err != nil {
			t.Fatal(err)
		}
		if packed[0] != formatComposeDictV2 {
			t.Fatalf("%d: format %d", i, packed[0])
		}
		md, err := encodeMeta(meta{To: c.m.To, Subject: CapSubject(c.m.Subject), MessageID: mid, Ref: "invite:1"})
		if err != nil {
			t.Fatal(err)
		}
		got, err := (&Queue{}).unpackRecord(&queue.Record{Meta: md, Data: packed})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d: %v\n%s\n---\n%s", i, err, got, want)
		}
		for n := range len(packed) - 1 {
			if _, err := (&Queue{}).unpackRecord(&queue.Record{Meta: md, Data: packed[:n+1]}); err == nil {
				t.Fatalf("%d: truncated to %d bytes, no error", i, n+1)
			}
		}
	}
}

// The default invite mail (the dictionary's own, with other values) takes
// less as Compose's inputs than composed (format 2).
func TestPackMessageIsSmallerForAnInvite(t *testing.T) {
	const from = `"Herald" <herald@herald.test>`
	text := strings.ReplaceAll(string(dictV2[strings.Index(string(dictV2), "Hi,"):strings.Index(string(dictV2), "<!DOCTYPE")]), "xxxxxxxx", "Yg7Kp2Qz")
	html := strings.ReplaceAll(string(dictV2[strings.Index(string(dictV2), "<!DOCTYPE"):]), "xxxxxxxx", "Yg7Kp2Qz")
	m := Message{To: "carol@example.net", Subject: "Bob invited you to Knitting on Matrix", Text: text, HTML: html,
		Headers: map[string]string{"List-Unsubscribe": "<http://herald.example.org/_herald/invites/optout?token=Yg7Kp2Qz>", "Auto-Submitted": "auto-generated"}}
	date := time.Date(2026, 11, 29, 22, 0, 0, 0, time.UTC)
	raw, err := Compose(m, from, date, "<7f3a9c@herald.test>")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := pack(raw)
	if err != nil {
		t.Fatal(err)
	}
	v3, err := packMessage(m, from, date)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes composed: %d as format 2, %d as format 3", len(raw), len(v2), len(v3))
	if len(v3) >= len(v2)*3/4 {
		t.Fatalf("format 3 takes %d bytes, format 2 %d", len(v3), len(v2))
	}
}
