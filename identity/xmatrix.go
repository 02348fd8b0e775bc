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

// XMatrixAuth is a parsed X-Matrix Authorization header.
type XMatrixAuth struct {
	Origin, Destination, KeyID, Signature string
}

// ParseXMatrix parses an Authorization header (X-Matrix origin=..,key=..,
// sig=..[,destination=..], values quoted or not, in any order) without
// checking the signature, so that a caller can compare the origin with what
// the request is about before anything is fetched.
func ParseXMatrix(authorization string) (XMatrixAuth, error) {
	if !strings.HasPrefix(authorization, "X-Matrix ") {
		return XMatrixAuth{}, fmt.Errorf("%w: not an X-Matrix authorization", ErrXMatrix)
	}
	a := mfed.ParseXMatrixAuth(authorization)
	if a.Origin == "" || a.KeyID == "" || a.Signature == "" {
		return XMatrixAuth{}, fmt.Errorf("%w: origin, key and sig are required", ErrXMatrix)
	}
	if !strings.HasPrefix(string(a.KeyID), "ed25519:") {
		return XMatrixAuth{}, fmt.Errorf("%w: unsupported key algorithm", ErrXMatrix)
	}
	return XMatrixAuth{Origin: a.Origin, Destination: a.Destination, KeyID: string(a.KeyID), Signature: a.Signature}, nil
}

// VerifyXMatrix checks a request signed by a homeserver and returns the
// origin. ownNames are the names this identity server answers to: its
// server_name first, then e.g. the host of its public URL. uri is the request
// URI as sent (path and query); body is the raw request body (nil or empty
// when there is none).
//
// Every form real homeservers send is accepted:
//   - Synapse since 1.58 (MSC3383), for requests to an identity server: the
//     header names destination="<id_server>" and the signed object carries
//     "destination_is": <id_server> (not "destination");
//   - Synapse before 1.58 and sydent: the same signed object, no destination
//     in the header;
//   - the server-server form: "destination" signed, with or without it in
//     the header.
//
// A destination named in the header must be one of ownNames; the signed
// destination_is or destination must be one of ownNames (and equal the
// header's, when it names one).
func VerifyXMatrix(ctx context.Context, keyer ServerKeyer, method, uri string, body []byte, authorization string, ownNames ...string) (string, error) {
	a, err := ParseXMatrix(authorization)
	if err != nil {
		return "", err
	}
	return a.Verify(ctx, keyer, method, uri, body, ownNames...)
}

// Verify checks the signature of a parsed header; see VerifyXMatrix. The
// origin's key is fetched only after every check that needs no key passed.
func (a XMatrixAuth) Verify(ctx context.Context, keyer ServerKeyer, method, uri string, body []byte, ownNames ...string) (string, error) {
	var names []string
	for _, n := range ownNames {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w: this server has no name to be the destination", ErrXMatrix)
	}
	if a.Destination != "" {
		if !slices.Contains(names, a.Destination) {
			return "", fmt.Errorf("%w: request is for %q, not this server", ErrXMatrix, a.Destination)
		}
		names = []string{a.Destination}
	}
	if len(body) > 0 && !json.Valid(body) {
		return "", fmt.Errorf("%w: body is not JSON", ErrXMatrix)
	}
	pub, err := keyer.ServerKey(ctx, a.Origin, a.KeyID)
	if err != nil {
		return "", fmt.Errorf("%w: cannot get key %s of %s: %w", ErrXMatrix, a.KeyID, a.Origin, err)
	}
	for _, field := range []string{"destination_is", "destination"} {
		for _, n := range names {
			signed := map[string]any{
				"method":     method,
				"uri":        uri,
				"origin":     a.Origin,
				field:        n,
				"signatures": map[string]map[string]string{a.Origin: {a.KeyID: a.Signature}},
			}
			if len(body) > 0 {
				signed["content"] = json.RawMessage(body)
			}
			if err = keys.VerifyJSON(signed, a.Origin, a.KeyID, pub); err == nil {
				return a.Origin, nil
			}
		}
	}
	return "", fmt.Errorf("%w: %v", ErrXMatrix, err)
}

// SignXMatrix builds the Authorization header value for a request signed as
// origin with key keyID, in the server-server form (destination signed and in
// the header). Used by tests and the homeserver simulator.
func SignXMatrix(method, uri string, body []byte, origin, destination, keyID string, priv ed25519.PrivateKey) (string, error) {
	sig, err := signXMatrix(method, uri, body, origin, "destination", destination, keyID, priv)
	if err != nil {
		return "", err
	}
	return mfed.XMatrixAuth{Origin: origin, Destination: destination, KeyID: id.KeyID(keyID), Signature: sig}.String(), nil
}

// SignXMatrixIdentity builds the Authorization header value exactly as
// Synapse (1.58 and later) builds it for a request to an identity server (its
// unbind), in build_auth_headers(destination=None, destination_is=idServer):
// the signed object is {method, uri, origin, destination_is: idServer,
// content}, and the header is
// X-Matrix origin="HS",key="K",sig="S",destination="ID_SERVER".
func SignXMatrixIdentity(method, uri string, body []byte, origin, idServer, keyID string, priv ed25519.PrivateKey) (string, error) {
	sig, err := signXMatrix(method, uri, body, origin, "destination_is", idServer, keyID, priv)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s",destination="%s"`, origin, keyID, sig, idServer), nil
}

// SignXMatrixIdentityLegacy is the same signed object with the header
// Synapse sent before 1.58 (and sydent sends): no destination, origin
// unquoted.
func SignXMatrixIdentityLegacy(method, uri string, body []byte, origin, idServer, keyID string, priv ed25519.PrivateKey) (string, error) {
	sig, err := signXMatrix(method, uri, body, origin, "destination_is", idServer, keyID, priv)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`X-Matrix origin=%s,key="%s",sig="%s"`, origin, keyID, sig), nil
}

// SignXMatrixNoDestination is the server-server signed object ("destination"
// signed) with a header that names no destination, as servers built before
// MSC3383 (Dendrite, older Synapse federation) send it.
func SignXMatrixNoDestination(method, uri string, body []byte, origin, destination, keyID string, priv ed25519.PrivateKey) (string, error) {
	sig, err := signXMatrix(method, uri, body, origin, "destination", destination, keyID, priv)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, origin, keyID, sig), nil
}

// signXMatrix signs {method, uri, origin, destKey: dest[, content]} as origin
// and returns the signature.
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
	return sigs[origin][keyID], nil
}
