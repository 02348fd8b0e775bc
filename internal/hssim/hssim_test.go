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
