package keys

import (
	"strings"
	"testing"
	"time"
)

// TestAddImported: another server's key joins the ring published but not
// current, survives a reopen, is added once, and a different key under the
// same id is refused.
func TestAddImported(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRing(dir, "id.example.org")
	if err != nil {
		t.Fatal(err)
	}
	own := r.Current()
	pub, priv := NewEphemeralKey()
	added, err := r.AddImported("ed25519:0", priv, time.Now())
	if err != nil || !added {
		t.Fatalf("AddImported: %v %v", added, err)
	}
	if again, err := r.AddImported("ed25519:0", priv, time.Now()); err != nil || again {
		t.Errorf("adding the same key again: %v %v, want no change", again, err)
	}
	_, other := NewEphemeralKey()
	if _, err := r.AddImported("ed25519:0", other, time.Now()); err == nil || !strings.Contains(err.Error(), "different key") {
		t.Errorf("a different key under the same id: %v", err)
	}
	if _, err := r.AddImported("curve25519:0", other, time.Now()); err == nil {
		t.Error("a non-ed25519 key id was accepted")
	}
	r2, err := OpenRing(dir, "id.example.org")
	if err != nil {
		t.Fatal(err)
	}
	k, ok := r2.Published("ed25519:0")
	if !ok || !k.Public.Equal(pub) || k.Current || r2.Current().ID != own.ID || !r2.IsValidPublic(EncodeBase64(pub)) {
		t.Errorf("after reopening: %+v published %v, current %s", k.ID, ok, r2.Current().ID)
	}
}
