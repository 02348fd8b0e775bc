package keys

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
)

// The Matrix specification's signing test vectors (appendices, "Signing JSON").
func TestSignJSONSpecVectors(t *testing.T) {
	seed, err := DecodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
	if err != nil {
		t.Fatal(err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	cases := []struct{ in, sig string }{
		{`{}`, "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"},
		{`{"one":1,"two":"Two"}`, "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"},
		// Key order, whitespace and an unsigned block must not change the signature.
		{` { "two" : "Two", "one" : 1, "unsigned": {"age": 3} } `, "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"},
	}
	for _, c := range cases {
		signed, err := SignJSON(json.RawMessage(c.in), "domain", "ed25519:1", priv)
		if err != nil {
			t.Fatal(err)
		}
		var sigs Signatures
		if err := json.Unmarshal(signed["signatures"], &sigs); err != nil {
			t.Fatal(err)
		}
		if got := sigs["domain"]["ed25519:1"]; got != c.sig {
			t.Errorf("SignJSON(%s) = %s, want %s", c.in, got, c.sig)
		}
		if err := VerifyJSON(signed, "domain", "ed25519:1", priv.Public().(ed25519.PublicKey)); err != nil {
			t.Errorf("VerifyJSON(%s): %v", c.in, err)
		}
		signed["one"] = json.RawMessage(`2`)
		if VerifyJSON(signed, "domain", "ed25519:1", priv.Public().(ed25519.PublicKey)) == nil {
			t.Errorf("VerifyJSON accepted a tampered object")
		}
	}
}
