package keys

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v3"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"
)

func TestRingFilesAndJWK(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	r, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	k := r.Current()
	if !strings.HasPrefix(k.ID, "ed25519:") || len(k.ID) <= len("ed25519:") {
		t.Fatalf("key id %q", k.ID)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("keys dir mode: %v %v", st.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var jwks int
	for _, de := range entries {
		st, err := os.Stat(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", de.Name(), st.Mode().Perm())
		}
		if strings.HasSuffix(de.Name(), ".jwk") {
			jwks++
			raw, _ := os.ReadFile(filepath.Join(dir, de.Name()))
			var jwk jose.JSONWebKey
			if err := jwk.UnmarshalJSON(raw); err != nil {
				t.Fatalf("%s is not a JWK: %v", de.Name(), err)
			}
			priv, ok := jwk.Key.(ed25519.PrivateKey)
			if !ok || jwk.KeyID != k.ID || jwk.Algorithm != "EdDSA" || !priv.Public().(ed25519.PublicKey).Equal(k.Public) {
				t.Errorf("JWK %s: kid %q alg %q key %T", de.Name(), jwk.KeyID, jwk.Algorithm, jwk.Key)
			}
		}
	}
	if jwks != 1 {
		t.Errorf("%d JWK files, want 1", jwks)
	}

	// Reopening loads the same key.
	r2, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Current(); got.ID != k.ID || !got.Public.Equal(k.Public) {
		t.Errorf("reopened ring has %s, want %s", got.ID, k.ID)
	}
}

func TestRingRotateRetire(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	first := r.Current()
	second, err := r.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if r.Current().ID != second.ID {
		t.Fatal("rotate did not change the current key")
	}
	if !r.IsValidPublic(first.PublicBase64()) || !r.IsValidPublic(second.PublicBase64()) {
		t.Error("both keys must be valid after rotate")
	}
	if err := r.Retire(second.ID); err == nil {
		t.Error("retiring the current key must fail")
	}
	if err := r.Retire("ed25519:nope"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("retire unknown: %v", err)
	}
	if err := r.Retire(first.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.Retire(first.ID); err != nil {
		t.Errorf("retiring twice: %v", err)
	}
	if r.IsValidPublic(first.PublicBase64()) {
		t.Error("retired key valid")
	}
	if _, ok := r.Published(first.ID); ok {
		t.Error("retired key published")
	}
	if k, ok := r.Get(first.ID); !ok || k.Valid() || k.Retired.IsZero() {
		t.Error("retired key lost")
	}
	list := r.List()
	if len(list) != 2 || list[0].ID != second.ID {
		t.Errorf("List = %v", list)
	}
	// Signatures use the current key.
	signed, err := r.Sign(map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyJSON(signed, "herald.test", second.ID, second.Public); err != nil {
		t.Error(err)
	}
}

// A second process (the `herald keys` command) changes the ring; the running
// server's ring picks the change up with ReloadIfChanged.
func TestRingReloadIfChanged(t *testing.T) {
	dir := t.TempDir()
	server, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	first := server.Current()
	if err := server.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	cli, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	second, err := cli.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	// Make the change visible even on file systems with coarse timestamps.
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "ring.json"), future, future); err != nil {
		t.Fatal(err)
	}
	if err := server.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	if server.Current().ID != second.ID {
		t.Fatalf("server ring still signs with %s", server.Current().ID)
	}
	if !server.IsValidPublic(first.PublicBase64()) {
		t.Error("old key no longer valid after reload")
	}
}

func TestRingRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	k := r.Current()
	path := filepath.Join(dir, strings.ReplaceAll(k.ID, ":", "_")+".jwk")
	// A JWK whose kid does not match its file is refused.
	other := jose.JSONWebKey{Key: ed25519.NewKeyFromSeed(make([]byte, 32)), KeyID: "ed25519:other", Algorithm: "EdDSA"}
	raw, _ := other.MarshalJSON()
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRing(dir, "herald.test"); err == nil {
		t.Error("OpenRing accepted a JWK with the wrong kid")
	}
	if err := os.WriteFile(filepath.Join(dir, "ring.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRing(dir, "herald.test"); err == nil {
		t.Error("OpenRing accepted a corrupt ring.json")
	}
}

// Herald's signatures verify with an independent implementation: mautrix's
// crypto/signatures, which (like gomatrixserverlib and Python's signedjson)
// strips signatures and unsigned, canonicalises and checks ed25519.
func TestSignaturesVerifyWithMautrix(t *testing.T) {
	r, err := OpenRing(t.TempDir(), "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{
		"mxid":     "@alice:hs.test",
		"token":    "abc",
		"sender":   "@bob:hs.test",
		"nested":   map[string]any{"z": 1, "a": []any{"ü", 2.5, nil, true}},
		"unsigned": map[string]any{"age": 12},
	}
	signed, err := r.Sign(obj)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(signed)
	k := r.Current()
	keyName := strings.TrimPrefix(k.ID, "ed25519:")
	ok, err := signatures.VerifySignatureJSON(json.RawMessage(raw), id.UserID("herald.test"), keyName, id.Ed25519(k.PublicBase64()))
	if err != nil || !ok {
		t.Fatalf("mautrix rejects Herald's signature: %v %v (%s)", ok, err, raw)
	}
	// And mautrix notices tampering.
	signed["token"] = json.RawMessage(`"abd"`)
	raw, _ = json.Marshal(signed)
	if ok, _ := signatures.VerifySignatureJSON(json.RawMessage(raw), id.UserID("herald.test"), keyName, id.Ed25519(k.PublicBase64())); ok {
		t.Fatal("mautrix accepted a tampered object")
	}
}

// canonicalForTest is an independent canonical JSON encoder written from the
// spec's definition (sorted keys, no insignificant whitespace, UTF-8 kept),
// enough for the values used here.
func canonicalForTest(t *testing.T, v any) string {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(canonicalForTest(t, k) + ":" + canonicalForTest(t, x[k]))
		}
		b.WriteByte('}')
		return b.String()
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = canonicalForTest(t, e)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case string:
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(x); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(b.String(), "\n")
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return "null"
	}
	t.Fatalf("canonicalForTest: %T", v)
	return ""
}

func TestSignaturesVerifyWithSpecCanonicalJSON(t *testing.T) {
	r, err := OpenRing(t.TempDir(), "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	signed, err := r.Sign(json.RawMessage(`{"b":"Two","a":1,"c":{"é":["x",true,null,-3]},"d":"<&>","unsigned":{"x":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(signed)
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	sig := m["signatures"].(map[string]any)["herald.test"].(map[string]any)[r.Current().ID].(string)
	delete(m, "signatures")
	delete(m, "unsigned")
	canon := canonicalForTest(t, m)
	if want := `{"a":1,"b":"Two","c":{"é":["x",true,null,-3]},"d":"<&>"}`; canon != want {
		t.Fatalf("test canonicaliser: %s", canon)
	}
	sigBytes, err := base64.RawStdEncoding.DecodeString(sig)
	if err != nil {
		t.Fatalf("signature is not unpadded base64: %v", err)
	}
	if !ed25519.Verify(r.Current().Public, []byte(canon), sigBytes) {
		t.Fatal("signature does not verify over the spec's canonical JSON")
	}
}

// A JWK whose public half (x) is another key's was accepted: Herald then
// published one key and signed with another, so no signature verified.
func TestRingRefusesMismatchedKeyHalves(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRing(dir, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	id := r.Current().ID
	path := r.src.(*fileRing).keyPath(id)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	m["x"] = base64.RawURLEncoding.EncodeToString(other)
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, open := range map[string]func(string, string) (*Ring, error){"OpenRing": OpenRing, "LoadRing": LoadRing} {
		if _, err := open(dir, "herald.test"); err == nil || !strings.Contains(err.Error(), "public key") {
			t.Errorf("%s accepted a key file whose halves disagree: %v", name, err)
		}
	}
	// A running server's reload refuses it too, and keeps the good key.
	if err := r.ReloadIfChanged(); err != nil {
		t.Fatal(err) // ring.json unchanged: nothing reloaded
	}
	if err := r.load(); err == nil {
		t.Error("reload accepted a key file whose halves disagree")
	}
	if k := r.Current(); !ed25519.NewKeyFromSeed(k.Private.Seed()).Public().(ed25519.PublicKey).Equal(k.Public) {
		t.Error("ring holds a key whose halves disagree")
	}
}

func TestLoadRingGeneratesNothing(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadRing(dir, "herald.test"); !errors.Is(err, ErrNoRing) {
		t.Fatalf("LoadRing on an empty dir: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("LoadRing wrote %v", entries)
	}
	r, _ := OpenRing(dir, "herald.test")
	var recorded []string
	r.SetRecorder(func(ids []string) error { recorded = ids; return nil })
	k, err := r.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 2 || (recorded[0] != k.ID && recorded[1] != k.ID) {
		t.Fatalf("recorder told %v, want both keys", recorded)
	}
	// A failing recorder keeps the ring as it was: nothing signs under an
	// unrecorded key.
	r.SetRecorder(func([]string) error { return errors.New("disk full") })
	if _, err := r.Rotate(); err == nil {
		t.Fatal("Rotate succeeded with a failing recorder")
	}
	if r.Current().ID != k.ID {
		t.Fatalf("current key %s, want %s", r.Current().ID, k.ID)
	}
}
