package keys

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/crypto/canonicaljson"
)

// Signatures is the Matrix "signatures" object: server name -> key id -> signature.
type Signatures map[string]map[string]string

// Canonical returns the canonical JSON of obj without its "signatures" and
// "unsigned" keys: the bytes that Matrix signs. obj may be json.RawMessage,
// []byte holding JSON, or anything json.Marshal accepts; it must be an object.
func Canonical(obj any) ([]byte, error) {
	m, err := toObject(obj)
	if err != nil {
		return nil, err
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return canonicaljson.CanonicalJSONAssumeValid(raw), nil
}

// SignJSON signs obj as server/keyID and returns obj with the signature added
// to any signatures it already carries, as a JSON object.
func SignJSON(obj any, server, keyID string, priv ed25519.PrivateKey) (map[string]json.RawMessage, error) {
	m, err := toObject(obj)
	if err != nil {
		return nil, err
	}
	sigs := Signatures{}
	if raw, ok := m["signatures"]; ok {
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return nil, fmt.Errorf("existing signatures: %w", err)
		}
	}
	unsigned, hadUnsigned := m["unsigned"]
	delete(m, "signatures")
	delete(m, "unsigned")
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(priv, canonicaljson.CanonicalJSONAssumeValid(raw))
	if sigs[server] == nil {
		sigs[server] = map[string]string{}
	}
	sigs[server][keyID] = base64.RawStdEncoding.EncodeToString(sig)
	m["signatures"], _ = json.Marshal(sigs)
	if hadUnsigned {
		m["unsigned"] = unsigned
	}
	return m, nil
}

// ErrNoSignature means obj carries no signature from that server and key.
var ErrNoSignature = errors.New("no signature from that server and key")

// VerifyJSON checks obj's signature by server/keyID with pub.
func VerifyJSON(obj any, server, keyID string, pub ed25519.PublicKey) error {
	m, err := toObject(obj)
	if err != nil {
		return err
	}
	var sigs Signatures
	if err := json.Unmarshal(m["signatures"], &sigs); err != nil {
		return ErrNoSignature
	}
	s, ok := sigs[server][keyID]
	if !ok {
		return ErrNoSignature
	}
	sig, err := DecodeBase64(s)
	if err != nil {
		return fmt.Errorf("signature is not base64: %w", err)
	}
	canon, err := Canonical(m)
	if err != nil {
		return err
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, canon, sig) {
		return errors.New("bad signature")
	}
	return nil
}

// EncodeBase64 is unpadded standard base64, as Matrix uses.
func EncodeBase64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// DecodeBase64 accepts unpadded and padded standard base64, and URL-safe base64.
func DecodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.StdEncoding, base64.RawURLEncoding, base64.URLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("invalid base64")
}

func toObject(obj any) (map[string]json.RawMessage, error) {
	var raw []byte
	switch v := obj.(type) {
	case map[string]json.RawMessage:
		c := make(map[string]json.RawMessage, len(v))
		for k, x := range v {
			c[k] = x
		}
		return c, nil
	case json.RawMessage:
		raw = v
	case []byte:
		raw = v
	default:
		var err error
		if raw, err = json.Marshal(obj); err != nil {
			return nil, err
		}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, errors.New("signed JSON must be an object")
	}
	return m, nil
}
