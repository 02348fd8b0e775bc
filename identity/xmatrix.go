package identity

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
// X-Matrix origin=..,key=..,sig=..[,destination=..]) and returns the origin.
// ownNames are the names this identity server answers to: its server_name
// first, then e.g. the host of its public URL. uri is the request URI as sent
// (path and query); body is the raw request body (nil or empty when there is
// none).
//
// Two signed forms are accepted:
//   - Synapse's and sydent's, for requests to an identity server: no
//     destination in the header, and the signed object carries
//     "destination_is": the identity server name the homeserver used (the
//     id_server of the binding), instead of "destination";
//   - the server-server form: "destination" signed, and given in the header
//     (it must then be one of ownNames) or, without one, one of ownNames.
func VerifyXMatrix(ctx context.Context, keyer ServerKeyer, method, uri string, body []byte, authorization string, ownNames ...string) (string, error) {
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
	var names []string
	for _, n := range ownNames {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w: this server has no name to be the destination", ErrXMatrix)
	}
	// Each candidate: the key ("destination" or "destination_is") and value.
	var cands [][2]string
	if a.Destination != "" {
		if !slices.Contains(names, a.Destination) {
			return "", fmt.Errorf("%w: request is for %q, not this server", ErrXMatrix, a.Destination)
		}
		cands = append(cands, [2]string{"destination", a.Destination})
	} else {
		for _, n := range names {
			cands = append(cands, [2]string{"destination_is", n})
		}
		for _, n := range names {
			cands = append(cands, [2]string{"destination", n})
		}
	}
	if len(body) > 0 && !json.Valid(body) {
		return "", fmt.Errorf("%w: body is not JSON", ErrXMatrix)
	}
	pub, err := keyer.ServerKey(ctx, a.Origin, string(a.KeyID))
	if err != nil {
		return "", fmt.Errorf("%w: cannot get key %s of %s: %v", ErrXMatrix, a.KeyID, a.Origin, err)
	}
	for _, c := range cands {
		signed := map[string]any{
			"method":     method,
			"uri":        uri,
			"origin":     a.Origin,
			c[0]:         c[1],
			"signatures": map[string]map[string]string{a.Origin: {string(a.KeyID): a.Signature}},
		}
		if len(body) > 0 {
			signed["content"] = json.RawMessage(body)
		}
		if err = keys.VerifyJSON(signed, a.Origin, string(a.KeyID), pub); err == nil {
			return a.Origin, nil
		}
	}
	return "", fmt.Errorf("%w: %v", ErrXMatrix, err)
}

// SignXMatrix builds the Authorization header value for a request signed as
// origin with key keyID, in the server-server form (destination signed and in
// the header). Used by tests and the homeserver simulator.
func SignXMatrix(method, uri string, body []byte, origin, destination, keyID string, priv ed25519.PrivateKey) (string, error) {
	return signXMatrix(method, uri, body, origin, "destination", destination, keyID, priv)
}

// SignXMatrixIdentity builds the Authorization header value exactly as
// Synapse signs a request to an identity server (its unbind): the signed
// object carries "destination_is": idServer and no "destination", and the
// header names no destination.
func SignXMatrixIdentity(method, uri string, body []byte, origin, idServer, keyID string, priv ed25519.PrivateKey) (string, error) {
	return signXMatrix(method, uri, body, origin, "destination_is", idServer, keyID, priv)
}

func signXMatrix(method, uri string, body []byte, origin, destKey, dest, keyID string, priv ed25519.PrivateKey) (string, error) {
	obj := map[string]any{"method": method, "uri": uri, "origin": origin, destKey: dest}
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
	if destKey != "destination" {
		// Synapse's header for identity servers: no destination, origin unquoted.
		return fmt.Sprintf(`X-Matrix origin=%s,key="%s",sig="%s"`, origin, keyID, sigs[origin][keyID]), nil
	}
	return mfed.XMatrixAuth{Origin: origin, Destination: dest, KeyID: id.KeyID(keyID), Signature: sigs[origin][keyID]}.String(), nil
}
