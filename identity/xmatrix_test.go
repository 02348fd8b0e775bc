package identity_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
)

// countingKeyer serves one homeserver's key and counts lookups.
type countingKeyer struct {
	server, keyID string
	pub           ed25519.PublicKey
	calls         int
}

func (k *countingKeyer) ServerKey(_ context.Context, server, keyID string) (ed25519.PublicKey, error) {
	k.calls++
	if server != k.server || keyID != k.keyID {
		return nil, errors.New("unknown key")
	}
	return k.pub, nil
}

// Every header and signed form real homeservers send is accepted for
// Herald's names, and refused for any other destination.
func TestVerifyXMatrixForms(t *testing.T) {
	pub, priv := keys.NewEphemeralKey()
	keyer := &countingKeyer{server: "hs.test", keyID: "ed25519:k", pub: pub}
	const uri = "/_matrix/identity/v2/3pid/unbind"
	body := []byte(`{"mxid":"@bob:hs.test","threepid":{"medium":"email","address":"bob@example.org"}}`)
	own := []string{"id.example.org", "id.example.org:8443"}
	type signer func(method, uri string, body []byte, origin, dest, keyID string, priv ed25519.PrivateKey) (string, error)
	forms := map[string]signer{
		"synapse":        identity.SignXMatrixIdentity,
		"synapse_legacy": identity.SignXMatrixIdentityLegacy,
		"server":         identity.SignXMatrix,
		"server_no_dest": identity.SignXMatrixNoDestination,
	}
	for name, sign := range forms {
		for _, dest := range own {
			h, err := sign("POST", uri, body, "hs.test", dest, "ed25519:k", priv)
			if err != nil {
				t.Fatal(err)
			}
			if origin, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, body, h, own...); err != nil || origin != "hs.test" {
				t.Errorf("%s to %s: %q %v", name, dest, origin, err)
			}
			// Another body, method or uri fails.
			if _, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, []byte(`{"mxid":"@eve:hs.test"}`), h, own...); err == nil {
				t.Errorf("%s: another body verified", name)
			}
			if _, err := identity.VerifyXMatrix(context.Background(), keyer, "PUT", uri, body, h, own...); err == nil {
				t.Errorf("%s: another method verified", name)
			}
		}
		// For another identity server: refused.
		h, _ := sign("POST", uri, body, "hs.test", "elsewhere.test", "ed25519:k", priv)
		if _, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, body, h, own...); !errors.Is(err, identity.ErrXMatrix) {
			t.Errorf("%s for elsewhere.test: %v", name, err)
		}
	}
	// A header naming Herald over a signature for another server is refused.
	sig, _ := identity.SignXMatrixIdentityLegacy("POST", uri, body, "hs.test", "elsewhere.test", "ed25519:k", priv)
	h := sig + `,destination="id.example.org"`
	if _, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, body, h, own...); err == nil {
		t.Error("a header destination other than the signed one verified")
	}
	// A header naming another server is refused before any key lookup.
	keyer.calls = 0
	h, _ = identity.SignXMatrixIdentity("POST", uri, body, "hs.test", "elsewhere.test", "ed25519:k", priv)
	if _, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, body, h, own...); err == nil || keyer.calls != 0 {
		t.Errorf("foreign header destination: %v, %d key lookups", err, keyer.calls)
	}
	// Malformed headers never reach the keyer.
	for _, h := range []string{"Bearer x", "X-Matrix origin=hs.test", `X-Matrix origin=hs.test,key="rsa:1",sig="x"`, `X-Matrix key="ed25519:k",sig="x"`} {
		if _, err := identity.VerifyXMatrix(context.Background(), keyer, "POST", uri, body, h, own...); err == nil || keyer.calls != 0 {
			t.Errorf("%q: %v, %d key lookups", h, err, keyer.calls)
		}
	}
}
