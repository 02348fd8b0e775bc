package keys_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

func isValid(t *testing.T, e *testenv.Env, path, pub string) bool {
	t.Helper()
	status, body := e.Do(t, http.MethodGet, path+"?public_key="+url.QueryEscape(pub), nil, "")
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, body)
	}
	var r struct {
		Valid *bool `json:"valid"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Valid == nil {
		t.Fatalf("GET %s: %s", path, body)
	}
	return *r.Valid
}

func TestPubkeyEndpoints(t *testing.T) {
	e := testenv.Start(t)
	ring := e.App.Ring()
	first := ring.Current()

	status, body := e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/"+first.ID, nil, "")
	if status != http.StatusOK {
		t.Fatalf("pubkey: %d %s", status, body)
	}
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal(body, &pk); err != nil || pk.PublicKey != first.PublicBase64() {
		t.Fatalf("pubkey = %s, want %s", body, first.PublicBase64())
	}
	status, body = e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/ed25519:nope", nil, "")
	if status != http.StatusNotFound || !json.Valid(body) {
		t.Fatalf("unknown pubkey: %d %s", status, body)
	}
	assertErrcode(t, body, "M_NOT_FOUND")

	const lt = "/_matrix/identity/v2/pubkey/isvalid"
	if !isValid(t, e, lt, first.PublicBase64()) {
		t.Error("current key not valid")
	}
	if isValid(t, e, lt, keys.EncodeBase64(make([]byte, 32))) {
		t.Error("unknown key valid")
	}
	if isValid(t, e, lt, "not base64 at all!") {
		t.Error("garbage valid")
	}

	// Rotation: the new key is current, the old one stays valid and published.
	second, err := ring.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if ring.Current().ID != second.ID || second.ID == first.ID {
		t.Fatalf("rotate did not make a new current key")
	}
	if !isValid(t, e, lt, first.PublicBase64()) || !isValid(t, e, lt, second.PublicBase64()) {
		t.Error("after rotate, both keys must be valid")
	}
	if status, _ := e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/"+first.ID, nil, ""); status != http.StatusOK {
		t.Errorf("rotated-out key no longer published: %d", status)
	}

	// Retirement: the old key is no longer valid nor published.
	if err := ring.Retire(first.ID); err != nil {
		t.Fatal(err)
	}
	if isValid(t, e, lt, first.PublicBase64()) {
		t.Error("retired key still valid")
	}
	if !isValid(t, e, lt, second.PublicBase64()) {
		t.Error("current key invalid after retiring another")
	}
	if status, _ := e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/"+first.ID, nil, ""); status != http.StatusNotFound {
		t.Errorf("retired key still published: %d", status)
	}

	// Survives a restart.
	e.Restart(t)
	if isValid(t, e, lt, first.PublicBase64()) || !isValid(t, e, lt, second.PublicBase64()) {
		t.Error("key states lost across restart")
	}

	// Missing parameter.
	status, body = e.Do(t, http.MethodGet, lt, nil, "")
	if status != http.StatusBadRequest {
		t.Fatalf("isvalid without public_key: %d %s", status, body)
	}
	assertErrcode(t, body, "M_MISSING_PARAMS")
}

func TestEphemeralIsValid(t *testing.T) {
	e := testenv.Start(t)
	const path = "/_matrix/identity/v2/pubkey/ephemeral/isvalid"
	eph := e.App.Ephemeral()
	pub, _ := keys.NewEphemeralKey()
	pubB64 := keys.EncodeBase64(pub)
	if isValid(t, e, path, pubB64) {
		t.Error("unknown ephemeral key valid")
	}
	if err := e.App.DB().Update(func(tx *store.Tx) error { return eph.Put(tx, pubB64, "test", time.Time{}) }); err != nil {
		t.Fatal(err)
	}
	if !isValid(t, e, path, pubB64) {
		t.Error("stored ephemeral key not valid")
	}
	// A key stored with an expiry answers false from that instant on, before
	// anything marks it.
	pub2, _ := keys.NewEphemeralKey()
	pub2B64 := keys.EncodeBase64(pub2)
	expires := e.Clock.Now().Add(time.Hour)
	if err := e.App.DB().Update(func(tx *store.Tx) error { return eph.Put(tx, pub2B64, "test", expires) }); err != nil {
		t.Fatal(err)
	}
	if !isValid(t, e, path, pub2B64) {
		t.Error("ephemeral key not valid before its expiry")
	}
	e.Clock.Advance(time.Hour)
	if isValid(t, e, path, pub2B64) {
		t.Error("ephemeral key still valid at its expiry")
	}
	// A long-term key is not an ephemeral key.
	if isValid(t, e, path, e.App.Ring().Current().PublicBase64()) {
		t.Error("long-term key valid as ephemeral")
	}
	if err := e.App.DB().Update(func(tx *store.Tx) error { return eph.Invalidate(tx, pubB64) }); err != nil {
		t.Fatal(err)
	}
	if isValid(t, e, path, pubB64) {
		t.Error("invalidated ephemeral key still valid")
	}
	status, body := e.Do(t, http.MethodGet, path, nil, "")
	if status != http.StatusBadRequest {
		t.Fatalf("without public_key: %d %s", status, body)
	}
	assertErrcode(t, body, "M_MISSING_PARAMS")
}

func assertErrcode(t *testing.T, body []byte, want string) {
	t.Helper()
	var r struct {
		Errcode string `json:"errcode"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Errcode != want {
		t.Errorf("errcode in %s, want %s", body, want)
	}
}

// Both isvalid endpoints read public_key the way url.Values would, whatever
// the form of the query: escaped or not, among other parameters, '+' as a
// space, and a missing, empty or badly escaped value as missing.
func TestIsValidQueryForms(t *testing.T) {
	e := testenv.Start(t)
	eph := e.App.Ephemeral()
	var pub string
	for !strings.ContainsAny(pub, "+/") { // a key that needs escaping
		k, _ := keys.NewEphemeralKey()
		pub = keys.EncodeBase64(k)
	}
	if err := e.App.DB().Update(func(tx *store.Tx) error { return eph.Put(tx, pub, "test", time.Time{}) }); err != nil {
		t.Fatal(err)
	}
	for path, key := range map[string]string{
		"/_matrix/identity/v2/pubkey/ephemeral/isvalid": pub,
		"/_matrix/identity/v2/pubkey/isvalid":           e.App.Ring().Current().PublicBase64(),
	} {
		esc := url.QueryEscape(key)
		for _, c := range []struct {
			query  string
			status int
			valid  bool
		}{
			{"public_key=" + esc, 200, true},
			{"public_key=" + strings.ReplaceAll(esc, "%2F", "/"), 200, true},
			{"other=1&public_key=" + esc, 200, true},
			{"public_key=" + esc + "&other=1", 200, true},
			{"public_key=" + esc + "%3D", 200, true}, // padded
			{"public_key=" + strings.ReplaceAll(key, "/", "%2F"), 200, !strings.Contains(key, "+")},
			{"public_key=", 400, false},
			{"public_key=%zz" + esc, 400, false},
			{"public_key=" + esc + "%", 400, false},
			{"", 400, false},
		} {
			status, body := e.Do(t, http.MethodGet, path+"?"+c.query, nil, "")
			if status != c.status {
				t.Errorf("%s?%s: %d %s, want %d", path, c.query, status, body, c.status)
				continue
			}
			if status != 200 {
				assertErrcode(t, body, "M_MISSING_PARAMS")
				continue
			}
			if want := fmt.Sprintf(`{"valid":%v}`, c.valid); string(body) != want {
				t.Errorf("%s?%s: %s, want %s", path, c.query, body, want)
			}
		}
	}
}
