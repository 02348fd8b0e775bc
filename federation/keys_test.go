package federation

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/keys"
)

func TestParseServerKeys(t *testing.T) {
	pub, priv := keys.NewEphemeralKey()
	now := time.Now()
	doc := func(server string, validUntil time.Time, signer string) []byte {
		obj := map[string]any{"server_name": server, "valid_until_ts": validUntil.UnixMilli(),
			"verify_keys": map[string]any{"ed25519:a": map[string]string{"key": keys.EncodeBase64(pub)}}}
		signed, err := keys.SignJSON(obj, signer, "ed25519:a", priv)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(signed)
		return raw
	}
	sk, err := ParseServerKeys(doc("hs.test", now.Add(48*time.Hour), "hs.test"), "hs.test", now)
	if err != nil || len(sk.Keys["ed25519:a"]) != 32 {
		t.Fatalf("good answer: %v", err)
	}
	if sk.ValidUntil.After(now.Add(24*time.Hour)) || sk.ValidUntil.Before(now.Add(23*time.Hour)) {
		t.Errorf("cache time not capped at a day: %v", sk.ValidUntil.Sub(now))
	}
	if sk, _ := ParseServerKeys(doc("hs.test", now.Add(-time.Hour), "hs.test"), "hs.test", now); sk == nil || !sk.ValidUntil.After(now) {
		t.Errorf("a past valid_until_ts is still cached briefly")
	}
	for name, c := range map[string]struct {
		raw    []byte
		server string
	}{
		"other server":    {doc("evil.test", now.Add(time.Hour), "evil.test"), "hs.test"},
		"not self-signed": {doc("hs.test", now.Add(time.Hour), "evil.test"), "hs.test"},
		"tampered":        {[]byte(strings.Replace(string(doc("hs.test", now.Add(time.Hour), "hs.test")), `"server_name":"hs.test"`, `"server_name":"hs.test","x":1`, 1)), "hs.test"},
		"not json":        {[]byte("{"), "hs.test"},
		"no verify keys":  {[]byte(`{"server_name":"hs.test","verify_keys":{}}`), "hs.test"},
	} {
		if _, err := ParseServerKeys(c.raw, c.server, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUnrecognizedRoute(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		want   bool
	}{
		{404, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, true},
		{405, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, true},
		{404, `404 page not found`, true},
		{404, `{"errcode":"M_NOT_FOUND","error":"unknown room"}`, false},
		{400, `{"errcode":"M_UNRECOGNIZED","error":"x"}`, false},
		{200, `{}`, false},
	} {
		if got := unrecognizedRoute(&Response{Status: c.status, Body: []byte(c.body)}); got != c.want {
			t.Errorf("%d %s: %v, want %v", c.status, c.body, got, c.want)
		}
	}
}
