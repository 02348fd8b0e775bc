package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/sydent"
)

// startImported runs Herald (testenv) on a data_dir into which the sydent-a
// fixture was imported, as after a cut-over: server_name is sydent's, the
// simulator plays the fixture's homeserver, and its requests for sydent's
// public host reach Herald.
func startImported(t *testing.T, mode hssim.Mode, v1 bool) (*world, *sydentfixture.Manifest) {
	t.Helper()
	dir := sydentfixture.Dir(t, "sydent-a")
	m := sydentfixture.Load(t, dir)
	w := &world{smtp: smtptest.Start(t, smtptest.Options{}), sim: hssim.New(t, m.FakeHomeserver, mode)}
	// bbolt: herald import sydent writes a bbolt data_dir only (on
	// PostgreSQL one imports there, then runs herald migrate-storage).
	w.env = testenv.Start(t, testenv.Bolt, func(c *config.Config) {
		c.ServerName = m.ServerName
		c.Compat.V1 = v1
		c.SMTP.Host, c.SMTP.Port = w.smtp.Host, w.smtp.Port
		c.Federation.Servers[m.FakeHomeserver] = w.sim.URL
		c.Delivery.MinBackoff = config.Duration(10 * time.Millisecond)
		c.Delivery.MaxBackoff = config.Duration(50 * time.Millisecond)
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		scfg, err := sydent.ReadConfig(filepath.Join(dir, "sydent.conf"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := server.New(c, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		r, err := sydent.Import(context.Background(), sydent.Target{DB: a.DB(), Identity: a.Identity(), Invites: a.Invites(),
			Ring: a.Ring(), Ephemeral: a.Ephemeral()}, filepath.Join(dir, "sydent.db"), scfg, sydent.Options{})
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		t.Logf("%s", r)
	})
	u, _ := url.Parse(m.ClientHTTPBase)
	w.sim.RouteHost(t, u.Host, w.env.URL)
	return w, m
}

// TestSydentTakeoverLookups: every binding in the fixture answers a v2
// sha256 lookup with sydent's pepper, a `none` lookup and a v1 lookup (by
// the address as the client submitted it to sydent), using an access token
// sydent issued; unbound addresses answer nothing.
func TestSydentTakeoverLookups(t *testing.T) {
	w, m := startImported(t, hssim.Dendrite, true)
	tok := m.Accounts[0].Token

	status, body := w.env.Do(t, "GET", "/_matrix/identity/v2/account", nil, tok)
	if status != 200 || !strings.Contains(string(body), m.Accounts[0].UserID) {
		t.Fatalf("sydent's access token: %d %s", status, body)
	}
	status, body = w.env.Do(t, "GET", "/_matrix/identity/v2/hash_details", nil, tok)
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	_ = json.Unmarshal(body, &hd)
	if status != 200 || hd.Pepper != m.LookupPepper {
		t.Fatalf("hash_details: %d %s, want sydent's pepper %q", status, body, m.LookupPepper)
	}

	var hashes, plain []string
	want := map[string]string{}
	for _, b := range m.Bindings {
		h := identity.LookupHash(b.Address, b.Medium, m.LookupPepper)
		hashes = append(hashes, h)
		want[h] = b.MXID
		plain = append(plain, b.Address+" "+b.Medium)
		want[b.Address+" "+b.Medium] = b.MXID
	}
	for _, u := range m.Unbound {
		hashes = append(hashes, identity.LookupHash(u.Address, u.Medium, m.LookupPepper))
		plain = append(plain, u.Address+" "+u.Medium)
	}
	for _, req := range []map[string]any{
		{"algorithm": "sha256", "pepper": m.LookupPepper, "addresses": hashes},
		{"algorithm": "none", "pepper": m.LookupPepper, "addresses": plain},
	} {
		status, body = w.env.Do(t, "POST", "/_matrix/identity/v2/lookup", req, tok)
		var got struct {
			Mappings map[string]string `json:"mappings"`
		}
		if err := json.Unmarshal(body, &got); status != 200 || err != nil {
			t.Fatalf("lookup %s: %d %s", req["algorithm"], status, body)
		}
		if len(got.Mappings) != len(m.Bindings) {
			t.Errorf("lookup %s: %d mappings, want %d", req["algorithm"], len(got.Mappings), len(m.Bindings))
		}
		for k, mxid := range got.Mappings {
			if want[k] != mxid {
				t.Errorf("lookup %s: %s -> %s, want %s", req["algorithm"], k, mxid, want[k])
			}
		}
	}

	for _, b := range m.Bindings {
		status, body = w.env.Do(t, "GET", "/_matrix/identity/api/v1/lookup?medium=email&address="+url.QueryEscape(b.AddressSubmitted), nil, "")
		var got map[string]any
		_ = json.Unmarshal(body, &got)
		if status != 200 || got["mxid"] != b.MXID {
			t.Errorf("v1 lookup %s: %d %s, want %s", b.AddressSubmitted, status, body, b.MXID)
			continue
		}
		// As Dendrite checks it: signed under the identity server's name, by
		// a key it publishes at pubkey/{keyId}.
		var sigs map[string]map[string]string
		raw, _ := json.Marshal(got["signatures"])
		_ = json.Unmarshal(raw, &sigs)
		verified := false
		for keyID := range sigs[m.ServerName] {
			st, kb := w.env.Do(t, "GET", "/_matrix/identity/api/v1/pubkey/"+url.PathEscape(keyID), nil, "")
			var k struct {
				PublicKey string `json:"public_key"`
			}
			_ = json.Unmarshal(kb, &k)
			pub, err := keys.DecodeBase64(k.PublicKey)
			if st == 200 && err == nil && keys.VerifyJSON(json.RawMessage(body), m.ServerName, keyID, ed25519.PublicKey(pub)) == nil {
				verified = true
			}
		}
		if !verified {
			t.Errorf("v1 lookup %s: no signature under %s verifies with a published key: %s", b.AddressSubmitted, m.ServerName, body)
		}
	}
	for _, u := range m.Unbound {
		status, body = w.env.Do(t, "GET", "/_matrix/identity/api/v1/lookup?medium=email&address="+url.QueryEscape(u.AddressSubmitted), nil, "")
		if status != 200 || strings.TrimSpace(string(body)) != "{}" {
			t.Errorf("v1 lookup of unbound %s: %d %s, want {}", u.AddressSubmitted, status, body)
		}
	}
}

// TestSydentTakeoverKeys: sydent's key is published at v1 and v2
// pubkey/ed25519:0, and every key_validity_url in every store-invite answer
// sydent gave (pending and delivered invites) answers valid for its key.
func TestSydentTakeoverKeys(t *testing.T) {
	for _, v1 := range []bool{false, true} {
		t.Run(fmt.Sprintf("compat.v1=%v", v1), func(t *testing.T) {
			w, m := startImported(t, hssim.Synapse, v1)
			paths := []string{"/_matrix/identity/v2/pubkey/"}
			if v1 {
				paths = append(paths, "/_matrix/identity/api/v1/pubkey/")
			}
			for _, p := range paths {
				for _, id := range []string{m.SigningKey.KeyID, url.PathEscape(m.SigningKey.KeyID)} {
					status, body := w.env.Do(t, "GET", p+id, nil, "")
					if status != 200 || !strings.Contains(string(body), `"public_key":"`+m.SigningKey.PublicKey+`"`) {
						t.Errorf("GET %s%s: %d %s", p, id, status, body)
					}
				}
			}
			checked := 0
			for _, inv := range append(append([]sydentfixture.Invite{}, m.PendingInvites...), m.DeliveredInvites...) {
				var ans struct {
					PublicKeys []struct {
						PublicKey      string `json:"public_key"`
						KeyValidityURL string `json:"key_validity_url"`
					} `json:"public_keys"`
				}
				if err := json.Unmarshal(inv.StoreInviteResponse, &ans); err != nil || len(ans.PublicKeys) == 0 {
					t.Fatalf("store-invite answer %s: %v", inv.StoreInviteResponse, err)
				}
				for _, pk := range ans.PublicKeys {
					u, err := url.Parse(pk.KeyValidityURL)
					if err != nil {
						t.Fatal(err)
					}
					status, body := w.env.Do(t, "GET", u.Path+"?public_key="+url.QueryEscape(pk.PublicKey), nil, "")
					if status != 200 || strings.TrimSpace(string(body)) != `{"valid":true}` {
						t.Errorf("%s for %s: %d %s", u.Path, pk.PublicKey, status, body)
					}
					checked++
				}
			}
			if checked != 2*(len(m.PendingInvites)+len(m.DeliveredInvites)) {
				t.Errorf("checked %d keys", checked)
			}
			// Keys sydent never issued are not valid.
			pub, _ := keys.NewEphemeralKey()
			status, body := w.env.Do(t, "GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(keys.EncodeBase64(pub)), nil, "")
			if status != 200 || strings.TrimSpace(string(body)) != `{"valid":false}` {
				t.Errorf("unknown ephemeral key: %d %s", status, body)
			}
		})
	}
}

// TestSydentTakeoverInvites: for every pending sydent invite, sign-ed25519
// (the email's signurl, v1 form) works with the ephemeral private key from
// sydent's mail, and the invitee's bind makes Herald deliver onbind signed
// under sydent's key id and server name, which the simulated homeserver
// checks as Synapse does (against the public keys of sydent's store-invite
// answer, then at its key_validity_url) or as Dendrite does.
func TestSydentTakeoverInvites(t *testing.T) {
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			w, m := startImported(t, mode, mode == hssim.Dendrite)
			for _, inv := range m.PendingInvites {
				if _, err := w.sim.AddStoreInviteAnswer(inv.RoomID, inv.Sender, m.ClientHTTPBase, inv.StoreInviteResponse); err != nil {
					t.Fatal(err)
				}
			}
			for i, inv := range m.PendingInvites {
				mxid := fmt.Sprintf("@invitee%02d:%s", i+1, m.FakeHomeserver)
				// The email's signurl, as matrix-js-sdk POSTs it.
				q := url.Values{"token": {inv.Token}, "private_key": {inv.EphemeralPrivateKey}, "mxid": {mxid}}
				status, body := w.env.Do(t, "POST", "/_matrix/identity/api/v1/sign-ed25519?"+q.Encode(), nil, "")
				if status != 200 {
					t.Fatalf("sign-ed25519 for invite %d: %d %s", i+1, status, body)
				}
				pub, err := keys.DecodeBase64(inv.EphemeralPublicKey)
				if err != nil {
					t.Fatal(err)
				}
				var signed map[string]any
				_ = json.Unmarshal(body, &signed)
				if signed["sender"] != inv.Sender || signed["mxid"] != mxid || signed["token"] != inv.Token {
					t.Errorf("sign-ed25519 signed %s", body)
				}
				if err := keys.VerifyJSON(json.RawMessage(body), m.ServerName, "ed25519:0", ed25519.PublicKey(pub)); err != nil {
					t.Errorf("sign-ed25519 for invite %d: signature under %s ed25519:0 by the mail's key: %v", i+1, m.ServerName, err)
				}
			}
			// A key that is not one sydent issued is refused.
			_, other := keys.NewEphemeralKey()
			q := url.Values{"token": {m.PendingInvites[0].Token}, "private_key": {keys.EncodeBase64(other.Seed())}, "mxid": {"@x:" + m.FakeHomeserver}}
			if status, body := w.env.Do(t, "POST", "/_matrix/identity/api/v1/sign-ed25519?"+q.Encode(), nil, ""); status != 403 {
				t.Errorf("sign-ed25519 with a foreign key: %d %s, want 403", status, body)
			}

			for i, inv := range m.PendingInvites {
				mxid := fmt.Sprintf("@invitee%02d:%s", i+1, m.FakeHomeserver)
				tok := registerAt(t, w, mxid, m.FakeHomeserver)
				secret := fmt.Sprintf("secret%02d", i+1)
				sid := w.validate(t, tok, inv.AddressSubmitted, secret)
				w.bind(t, tok, sid, secret, mxid)
				waitFor(t, "onbind of invite "+inv.Address, func() bool {
					for _, a := range w.sim.Accepted() {
						if a.Token == inv.Token {
							return true
						}
					}
					return false
				})
			}
			accepted := w.sim.Accepted()
			if len(accepted) != len(m.PendingInvites) {
				t.Errorf("simulator accepted %d invites, want %d", len(accepted), len(m.PendingInvites))
			}
			byToken := map[string]hssim.Accepted{}
			for _, a := range accepted {
				byToken[a.Token] = a
			}
			for i, inv := range m.PendingInvites {
				a := byToken[inv.Token]
				if a.RoomID != inv.RoomID || a.Sender != inv.Sender || a.MXID != fmt.Sprintf("@invitee%02d:%s", i+1, m.FakeHomeserver) {
					t.Errorf("invite %d accepted as %+v", i+1, a)
				}
			}
			for _, c := range w.sim.Calls() {
				if c.Status != 200 {
					t.Errorf("onbind answered %d: %s", c.Status, c.Body)
				}
			}
		})
	}
}

func registerAt(t *testing.T, w *world, mxid, server string) string {
	t.Helper()
	oid := w.sim.AddUser(mxid)
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": oid, "token_type": "Bearer", "matrix_server_name": server, "expires_in": 3600,
	}, "")
	if status != 200 {
		t.Fatalf("register %s: %d %s", mxid, status, body)
	}
	var r struct{ Token string }
	_ = json.Unmarshal(body, &r)
	return r.Token
}

// TestSydentTakeoverRepeatedStoreInvite: a homeserver sending store-invite
// again for a pending imported invite (same sender, room and address) gets
// a new invite with a complete answer (Herald does not know the imported
// invite's ephemeral key, so it cannot repeat sydent's answer).
func TestSydentTakeoverRepeatedStoreInvite(t *testing.T) {
	w, m := startImported(t, hssim.Synapse, false)
	inv := m.PendingInvites[0]
	tok := ""
	for _, a := range m.Accounts {
		if a.UserID == inv.Sender {
			tok = a.Token
		}
	}
	if tok == "" {
		t.Fatalf("no account for %s in the fixture", inv.Sender)
	}
	status, body := w.env.Do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": inv.Address, "room_id": inv.RoomID, "sender": inv.Sender,
	}, tok)
	if status != 200 {
		t.Fatalf("store-invite: %d %s", status, body)
	}
	var ans struct {
		Token      string `json:"token"`
		PublicKeys []struct {
			PublicKey string `json:"public_key"`
		} `json:"public_keys"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		t.Fatal(err)
	}
	if ans.Token == inv.Token || ans.Token == "" || len(ans.PublicKeys) != 2 || ans.PublicKeys[1].PublicKey == "" {
		t.Errorf("repeated store-invite answered %s", body)
	}
}
