package invites_test

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/keys"
)

// thirdPartyInvite is the content Synapse writes into the
// m.room.third_party_invite state event from Herald's store-invite answer.
type thirdPartyInvite struct {
	DisplayName    string                     `json:"display_name"`
	PublicKeys     []map[string]string        `json:"public_keys"`
	KeyValidityURL string                     `json:"key_validity_url"`
	PublicKey      string                     `json:"public_key"`
	raw            map[string]json.RawMessage `json:"-"`
}

// synapseEvent builds the event content the way Synapse does
// (INTEROP.md, step 6).
func synapseEvent(t *testing.T, raw []byte, idServer string) thirdPartyInvite {
	var ans map[string]json.RawMessage
	if err := json.Unmarshal(raw, &ans); err != nil {
		t.Fatal(err)
	}
	var ev thirdPartyInvite
	json.Unmarshal(ans["display_name"], &ev.DisplayName)
	json.Unmarshal(ans["public_keys"], &ev.PublicKeys)
	if pk, ok := ans["public_key"]; ok {
		json.Unmarshal(pk, &ev.PublicKey)
		ev.KeyValidityURL = "https://" + idServer + "/_matrix/identity/v2/pubkey/isvalid"
	} else {
		ev.PublicKey = ev.PublicKeys[0]["public_key"]
		ev.KeyValidityURL = ev.PublicKeys[0]["key_validity_url"]
	}
	return ev
}

// synapseVerify checks third_party_signed the way Synapse does on join:
// every key of the event (legacy public_key first, then public_keys), every
// server name in signatures, every key id starting "ed25519:"; then a GET of
// that key's key_validity_url?public_key= must answer valid: true.
func synapseVerify(client *http.Client, ev thirdPartyInvite, signed map[string]json.RawMessage) error {
	type cand struct{ key, url string }
	cands := []cand{{ev.PublicKey, ev.KeyValidityURL}}
	for _, pk := range ev.PublicKeys {
		cands = append(cands, cand{pk["public_key"], pk["key_validity_url"]})
	}
	var sigs keys.Signatures
	if err := json.Unmarshal(signed["signatures"], &sigs); err != nil {
		return err
	}
	for _, c := range cands {
		pub, err := keys.DecodeBase64(c.key)
		if err != nil {
			continue
		}
		for server, byKey := range sigs {
			for keyID := range byKey {
				if !strings.HasPrefix(keyID, "ed25519:") {
					continue
				}
				if keys.VerifyJSON(signed, server, keyID, ed25519.PublicKey(pub)) != nil {
					continue
				}
				resp, err := client.Get(c.url + "?public_key=" + url.QueryEscape(c.key))
				if err != nil {
					return fmt.Errorf("key_validity_url unreachable: %w", err)
				}
				var v struct {
					Valid bool `json:"valid"`
				}
				err = json.NewDecoder(resp.Body).Decode(&v)
				resp.Body.Close()
				if err != nil || !v.Valid {
					return errors.New("key_validity_url says the key is not valid")
				}
				return nil
			}
		}
	}
	return errors.New("no signature verified")
}

func TestSynapseStyleVerification(t *testing.T) {
	e := start(t)
	tok := e.register(t, alice)
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, "syn@example.org"), tok)
	if status != 200 {
		t.Fatalf("%d %s", status, raw)
	}
	ev := synapseEvent(t, raw, "unused")
	// Synapse read public_key, so it invented a key_validity_url on the id_server
	// name; point it at the test server as a real deployment's name would be.
	ev.KeyValidityURL = e.URL + "/_matrix/identity/v2/pubkey/isvalid"

	// The invitee's client signs through the email's signurl.
	p, _ := e.waitMail(t, 1)
	join, _ := url.Parse(findLink(t, p.Text, "https://app.element.io/"))
	frag, _ := url.Parse(join.EscapedFragment())
	req, _ := http.NewRequest(http.MethodPost, frag.Query().Get("signurl")+"&mxid="+url.QueryEscape("@new:hs2.test"), nil)
	resp := e.DoRequest(t, req)
	body := readAll(resp)
	if resp.StatusCode != 200 {
		t.Fatalf("sign: %d %s", resp.StatusCode, body)
	}
	var signed map[string]json.RawMessage
	json.Unmarshal(body, &signed)
	if err := synapseVerify(e.Client, ev, signed); err != nil {
		t.Fatalf("Synapse would refuse the join: %v", err)
	}
	// A tampered object fails.
	signed["mxid"] = json.RawMessage(`"@evil:hs2.test"`)
	if synapseVerify(e.Client, ev, signed) == nil {
		t.Error("tampered signed object verified")
	}
}

func TestV1StoreInviteDendriteForm(t *testing.T) {
	e := start(t, func(c *config.Config) { c.Compat.V1 = true })
	form := url.Values{"medium": {"email"}, "address": {"Dendrite@Example.org"}, "room_id": {"!d:hs.test"},
		"sender": {"@dan:hs.test"}, "sender_display_name": {"Dan"}}
	req, _ := http.NewRequest(http.MethodPost, "/_matrix/identity/api/v1/store-invite", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp := e.DoRequest(t, req)
	body := readAll(resp)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var a storeAnswer
	json.Unmarshal(body, &a)
	// Dendrite copies public_key into the event: it must be the long-term key.
	// public_keys lists only that key: Dendrite never checks key_validity_url,
	// so an ephemeral key there would outlive a revocation.
	if a.Token == "" || len(a.PublicKeys) != 1 || a.DisplayName != "d...@e..." ||
		a.PublicKey != e.App.Ring().Current().PublicBase64() || a.PublicKeys[0].PublicKey != a.PublicKey ||
		a.PublicKeys[0].KeyValidityURL != e.URL+"/_matrix/identity/api/v1/pubkey/isvalid" {
		t.Errorf("answer %s", body)
	}
	// The key is valid at its v1 URL.
	for _, pk := range a.PublicKeys {
		status, raw := e.Do(t, http.MethodGet, strings.TrimPrefix(pk.KeyValidityURL, e.URL)+"?public_key="+url.QueryEscape(pk.PublicKey), nil, "")
		if status != 200 || strings.TrimSpace(string(raw)) != `{"valid":true}` {
			t.Errorf("v1 isvalid %s: %d %s", pk.KeyValidityURL, status, raw)
		}
	}
	inv, _ := e.App.Invites().ByToken(a.Token)
	if inv == nil || inv.Address != "dendrite@example.org" || inv.SenderDisplayName != "Dan" || inv.Via != "v1" {
		t.Errorf("stored %+v", inv)
	}
	e.waitMail(t, 1)

	// JSON works too, and errors are Matrix errors.
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", inviteBody("@dan:hs.test", "j@example.org"), "")
	if status != 200 {
		t.Errorf("v1 JSON: %d %s", status, raw)
	}
	status, raw = e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", "medium=email&address=x", "")
	if status != 400 || errcode(t, raw)["errcode"] != "M_MISSING_PARAMS" {
		t.Errorf("v1 missing: %d %s", status, raw)
	}
}

func TestV1StoreInviteAllowlist(t *testing.T) {
	e := start(t, func(c *config.Config) {
		c.Compat.V1 = true
		c.Compat.V1StoreInviteAllow = []string{"10.0.0.0/8", "192.0.2.1"}
	})
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", inviteBody("@dan:hs.test", "j@example.org"), "")
	if status != 403 || errcode(t, raw)["errcode"] != "M_FORBIDDEN" {
		t.Errorf("from 127.0.0.1: %d %s", status, raw)
	}
	e.Restart(t, func(c *config.Config) { c.Compat.V1StoreInviteAllow = []string{"127.0.0.0/8"} })
	status, raw = e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", inviteBody("@dan:hs.test", "j@example.org"), "")
	if status != 200 {
		t.Errorf("allowed: %d %s", status, raw)
	}
}

func TestV1OffByDefault(t *testing.T) {
	e := start(t)
	status, _ := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/store-invite", inviteBody("@dan:hs.test", "j@example.org"), "")
	if status != 404 {
		t.Errorf("v1 store-invite without compat.v1: %d", status)
	}
}
