package identity

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	mfed "maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/herald-im/herald/keys"
)

// ServerKeyer finds a homeserver's published signing key (federation.Client).
type ServerKeyer interface {
	ServerKey(ctx context.Context, server, keyID string) (ed25519.PublicKey, error)
}

// ErrXMatrix wraps every reason an X-Matrix signed request is refused.
var ErrXMatrix = errors.New("X-Matrix authorization refused")

// VerifyXMatrix checks a request signed by a homeserver (Authorization:
// X-Matrix origin=..,destination=..,key=..,sig=..) and returns the origin.
// ownName is Herald's server_name: a destination in the header must equal
// it, and it is the destination signed when the header names none. uri is
// the request URI as sent (path and query); body is the raw request body
// (nil or empty when there is none).
func VerifyXMatrix(ctx context.Context, keyer ServerKeyer, method, uri string, body []byte, authorization, ownName string) (string, error) {
	if !strings.HasPrefix(authorization, "X-Matrix ") {
		return "", fmt.Errorf("%w: not an X-Matrix authorization", ErrXMatrix)
	}
	a := mfed.ParseXMatrixAuth(authorization)
	if a.Origin == "" || a.KeyID == "" || a.Signature == "" {
		return "", fmt.Errorf("%w: origin, key and sig are required", ErrXMatrix)
	}
	if !strings.HasPrefix(string(a.KeyID), "ed25519:") {
		return "", fmt.Errorf("%w: unsupported key algorithm", ErrXMatrix)
	}
	dest := ownName
	if a.Destination != "" {
		if a.Destination != ownName {
			return "", fmt.Errorf("%w: request is for %q, not this server", ErrXMatrix, a.Destination)
		}
		dest = a.Destination
	}
	signed := map[string]any{
		"method":      method,
		"uri":         uri,
		"origin":      a.Origin,
		"destination": dest,
		"signatures":  map[string]map[string]string{a.Origin: {string(a.KeyID): a.Signature}},
	}
	if len(body) > 0 {
		if !json.Valid(body) {
			return "", fmt.Errorf("%w: body is not JSON", ErrXMatrix)
		}
		signed["content"] = json.RawMessage(body)
	}
	pub, err := keyer.ServerKey(ctx, a.Origin, string(a.KeyID))
	if err != nil {
		return "", fmt.Errorf("%w: cannot get key %s of %s: %v", ErrXMatrix, a.KeyID, a.Origin, err)
	}
	if err := keys.VerifyJSON(signed, a.Origin, string(a.KeyID), pub); err != nil {
		return "", fmt.Errorf("%w: %v", ErrXMatrix, err)
	}
	return a.Origin, nil
}

// SignXMatrix builds the Authorization header value for a request signed as
// origin with key keyID (what a homeserver sends; used by tests and the
// homeserver simulator).
func SignXMatrix(method, uri string, body []byte, origin, destination, keyID string, priv ed25519.PrivateKey) (string, error) {
	obj := map[string]any{"method": method, "uri": uri, "origin": origin, "destination": destination}
	if len(body) > 0 {
		obj["content"] = json.RawMessage(body)
	}
	signed, err := keys.SignJSON(obj, origin, keyID, priv)
	if err != nil {
		return "", err
	}
	var sigs keys.Signatures
	if err := json.Unmarshal(signed["signatures"], &sigs); err != nil {
		return "", err
	}
	return mfed.XMatrixAuth{Origin: origin, Destination: destination, KeyID: id.KeyID(keyID), Signature: sigs[origin][keyID]}.String(), nil
}
