package hssim_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/keys"
)

// The simulator must refuse what Synapse and Dendrite refuse, or the
// end-to-end tests prove nothing.
func TestSimulatorRefusesWhatHomeserversRefuse(t *testing.T) {
	pub, priv := keys.NewEphemeralKey()
	valid := true
	validity := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]bool{"valid": valid && r.URL.Query().Get("public_key") == keys.EncodeBase64(pub)})
	}))
	t.Cleanup(validity.Close)

	sign := func(obj map[string]any) json.RawMessage {
		s, err := keys.SignJSON(obj, "id.test", "ed25519:1", priv)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(s)
		return raw
	}
	post := func(sim *hssim.Sim, signed json.RawMessage, sender string) int {
		body, _ := json.Marshal(map[string]any{"medium": "email", "address": "a@b.example", "mxid": "@bob:sim.test",
			"invites": []any{map[string]any{"medium": "email", "address": "a@b.example", "mxid": "@bob:sim.test",
				"room_id": "!r:hs.test", "sender": sender, "signed": signed}}})
		resp, err := http.Post(sim.URL+"/_matrix/federation/v1/3pid/onbind", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite} {
		sim := hssim.New(t, "sim.test", mode)
		sim.AddUser("@bob:sim.test")
		sim.AddInvite(hssim.Invite{RoomID: "!r:hs.test", Sender: "@alice:hs.test", Token: "tok",
			PublicKeys: []hssim.PublicKey{{PublicKey: keys.EncodeBase64(pub), KeyValidityURL: validity.URL}}})
		good := sign(map[string]any{"mxid": "@bob:sim.test", "token": "tok"})
		if s := post(sim, good, "@mallory:hs.test"); s == 200 {
			t.Errorf("%s: accepted a wrong sender", mode)
		}
		_, otherKey := keys.NewEphemeralKey()
		forged, _ := keys.SignJSON(map[string]any{"mxid": "@bob:sim.test", "token": "tok"}, "id.test", "ed25519:1", otherKey)
		forgedRaw, _ := json.Marshal(forged)
		if s := post(sim, forgedRaw, "@alice:hs.test"); s == 200 {
			t.Errorf("%s: accepted a signature by another key", mode)
		}
		if mode == hssim.Synapse {
			tampered := bytes.Replace(good, []byte(`"token":"tok"`), []byte(`"token":"tok","x":1`), 1)
			if s := post(sim, tampered, "@alice:hs.test"); s == 200 {
				t.Errorf("synapse: accepted a signed object with an unsigned extra key")
			}
		}
		if mode == hssim.Dendrite {
			extra := sign(map[string]any{"mxid": "@bob:sim.test", "token": "tok", "sender": "@alice:hs.test"})
			if s := post(sim, extra, "@alice:hs.test"); s == 200 {
				t.Errorf("dendrite: accepted a signature over more than {mxid, token}")
			}
		}
		if mode == hssim.Synapse {
			valid = false
			if s := post(sim, good, "@alice:hs.test"); s != 403 {
				t.Errorf("synapse: key_validity_url saying invalid gave %d", s)
			}
			valid = true
		}
		if s := post(sim, good, "@alice:hs.test"); s != 200 {
			t.Errorf("%s: refused a good invite: %d", mode, s)
		}
		if n := len(sim.Accepted()); n != 1 {
			t.Errorf("%s: %d accepted", mode, n)
		}
	}
}

// Synapse's loop: every public key of the event (legacy public_key first,
// then public_keys); for each, the first ed25519: signature in the order
// received is tried and a failure gives up on that key; a key_validity_url
// saying invalid moves on to the next key. Dendrite checks public_keys only.
func TestSimulatorKeyLoops(t *testing.T) {
	pub, priv := keys.NewEphemeralKey()
	_, otherPriv := keys.NewEphemeralKey()
	validitySrv := func(valid bool) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewEncoder(w).Encode(map[string]bool{"valid": valid})
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	yes, no := validitySrv(true), validitySrv(false)
	sigOf := func(server, keyID string, k []byte) string {
		s, err := keys.SignJSON(map[string]any{"mxid": "@bob:sim.test", "token": "tok"}, server, keyID, k)
		if err != nil {
			t.Fatal(err)
		}
		var sigs keys.Signatures
		_ = json.Unmarshal(s["signatures"], &sigs)
		return sigs[server][keyID]
	}
	good := sigOf("id.test", "ed25519:1", priv)
	bad := sigOf("aaa.test", "ed25519:x", otherPriv)
	signed := func(sigs string) json.RawMessage {
		return json.RawMessage(`{"mxid":"@bob:sim.test","token":"tok","signatures":{` + sigs + `}}`)
	}
	post := func(sim *hssim.Sim, signed json.RawMessage) int {
		body, _ := json.Marshal(map[string]any{"invites": []any{map[string]any{"medium": "email", "address": "a@b.example",
			"mxid": "@bob:sim.test", "room_id": "!r:hs.test", "sender": "@alice:hs.test", "signed": signed}}})
		resp, err := http.Post(sim.URL+"/_matrix/federation/v1/3pid/onbind", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	pk := keys.EncodeBase64(pub)
	for _, c := range []struct {
		name   string
		mode   hssim.Mode
		inv    hssim.Invite
		signed json.RawMessage
		ok     bool
	}{
		{"synapse: legacy public_key alone", hssim.Synapse,
			hssim.Invite{PublicKey: pk, KeyValidityURL: yes}, signed(`"id.test":{"ed25519:1":"` + good + `"}`), true},
		{"synapse: a bad first signature gives up on the key", hssim.Synapse,
			hssim.Invite{PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"aaa.test":{"ed25519:x":"` + bad + `"},"id.test":{"ed25519:1":"` + good + `"}`), false},
		{"synapse: the good signature first", hssim.Synapse,
			hssim.Invite{PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"id.test":{"ed25519:1":"` + good + `"},"aaa.test":{"ed25519:x":"` + bad + `"}`), true},
		{"synapse: non-ed25519 key ids are skipped", hssim.Synapse,
			hssim.Invite{PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"id.test":{"curve25519:1":"AAAA","ed25519:1":"` + good + `"}`), true},
		{"synapse: any server name", hssim.Synapse,
			hssim.Invite{PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"elsewhere.test":{"ed25519:zz":"` + sigOf("elsewhere.test", "ed25519:zz", priv) + `"}`), true},
		{"synapse: legacy key invalid, then public_keys valid", hssim.Synapse,
			hssim.Invite{PublicKey: pk, KeyValidityURL: no, PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"id.test":{"ed25519:1":"` + good + `"}`), true},
		{"synapse: every key invalid", hssim.Synapse,
			hssim.Invite{PublicKey: pk, KeyValidityURL: no, PublicKeys: []hssim.PublicKey{{pk, no}}}, signed(`"id.test":{"ed25519:1":"` + good + `"}`), false},
		{"dendrite: legacy public_key is not checked", hssim.Dendrite,
			hssim.Invite{PublicKey: pk, KeyValidityURL: yes}, signed(`"id.test":{"ed25519:1":"` + good + `"}`), false},
		{"dendrite: any signature of public_keys", hssim.Dendrite,
			hssim.Invite{PublicKeys: []hssim.PublicKey{{pk, yes}}}, signed(`"aaa.test":{"ed25519:x":"` + bad + `"},"id.test":{"ed25519:1":"` + good + `"}`), true},
	} {
		sim := hssim.New(t, "sim.test", c.mode)
		sim.AddUser("@bob:sim.test")
		c.inv.RoomID, c.inv.Sender, c.inv.Token = "!r:hs.test", "@alice:hs.test", "tok"
		sim.AddInvite(c.inv)
		if got := post(sim, c.signed) == 200; got != c.ok {
			t.Errorf("%s: accepted = %v, want %v", c.name, got, c.ok)
		}
	}
}
