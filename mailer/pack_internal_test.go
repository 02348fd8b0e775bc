package mailer

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
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
