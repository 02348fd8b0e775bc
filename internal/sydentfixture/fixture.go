// Package sydentfixture finds and reads the sydent deployment fixtures in
// ../shared/fixtures (a real sydent 2.6.1's database, config and mails with
// a manifest of what they hold), and generates large sydent-shaped
// databases for benchmarks. Tests read the fixtures in place, never copies.
package sydentfixture

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the fixture directory name (e.g. "sydent-a"): under
// $FIXTURES_DIR, else ../shared/fixtures beside the module root.
// Missing, it fails the test under CI=true and otherwise skips it with one
// line saying so (a fresh clone has nothing beside it).
func Dir(t testing.TB, name string) string {
	t.Helper()
	root := os.Getenv("FIXTURES_DIR")
	if root == "" {
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				root = filepath.Join(filepath.Dir(d), "shared", "fixtures")
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	dir := filepath.Join(root, name)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("sydent fixture %s not found (%v); set FIXTURES_DIR", dir, err)
		}
		t.Skipf("sydent fixture %s not found: set FIXTURES_DIR to run this test", dir)
	}
	return dir
}

// Manifest is what a fixture's manifest.json says it holds.
type Manifest struct {
	ServerName     string `json:"server_name"`
	ClientHTTPBase string `json:"client_http_base"`
	SigningKey     struct {
		KeyID     string `json:"key_id"`
		PublicKey string `json:"public_key"`
	} `json:"signing_key"`
	FakeHomeserver string    `json:"fake_homeserver"`
	LookupPepper   string    `json:"lookup_pepper"`
	Bindings       []Binding `json:"bindings"`
	Unbound        []struct {
		Medium, Address  string
		AddressSubmitted string `json:"address_submitted"`
		FormerMXID       string `json:"former_mxid"`
	} `json:"unbound"`
	PendingInvites   []Invite `json:"pending_invites"`
	DeliveredInvites []Invite `json:"delivered_invites"`
	Accounts         []struct {
		UserID string `json:"user_id"`
		Token  string `json:"token"`
	} `json:"accounts"`
	Counts map[string]int `json:"counts"`
	SQLite struct {
		Tables map[string]int `json:"tables"`
	} `json:"sqlite"`
}

// Binding is one binding in force.
type Binding struct {
	Medium           string `json:"medium"`
	Address          string `json:"address"`
	AddressSubmitted string `json:"address_submitted"`
	MXID             string `json:"mxid"`
}

// Invite is one invite sydent stored, with its store-invite answer and the
// ephemeral key pair from its mail.
type Invite struct {
	API                 string          `json:"api"`
	RoomID              string          `json:"room_id"`
	Sender              string          `json:"sender"`
	Medium              string          `json:"medium"`
	Address             string          `json:"address"`
	AddressSubmitted    string          `json:"address_submitted"`
	Token               string          `json:"token"`
	StoreInviteResponse json.RawMessage `json:"store_invite_response"`
	EphemeralPublicKey  string          `json:"ephemeral_public_key"`
	EphemeralPrivateKey string          `json:"ephemeral_private_key"`
	Mail                string          `json:"mail"`
	BoundMXID           string          `json:"bound_mxid"`
}

// Load reads the fixture's manifest.
func Load(t testing.TB, dir string) *Manifest {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	m := new(Manifest)
	if err := json.Unmarshal(raw, m); err != nil {
		t.Fatalf("%s/manifest.json: %v", dir, err)
	}
	return m
}
