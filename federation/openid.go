package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrOpenIDRejected means the homeserver did not vouch for the token.
var ErrOpenIDRejected = errors.New("the homeserver rejected the OpenID token")

// UserInfo asks server who owns an OpenID access token
// (GET /_matrix/federation/v1/openid/userinfo) and checks that the user
// belongs to that server.
func (c *Client) UserInfo(ctx context.Context, server, token string) (string, error) {
	resp, err := c.Do(ctx, server, "GET", "/_matrix/federation/v1/openid/userinfo", url.Values{"access_token": {token}}, nil, nil, 5<<10)
	if err != nil {
		return "", err
	}
	if resp.Status == 401 || resp.Status == 403 || resp.Status == 404 {
		return "", ErrOpenIDRejected
	}
	if resp.Status != 200 {
		return "", fmt.Errorf("userinfo: homeserver answered %d", resp.Status)
	}
	var body struct {
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(resp.Body, &body); err != nil || body.Sub == "" {
		return "", fmt.Errorf("userinfo: malformed answer from homeserver")
	}
	_, domain, ok := strings.Cut(body.Sub, ":")
	if !strings.HasPrefix(body.Sub, "@") || !ok || domain != server {
		return "", fmt.Errorf("%w: user %q does not belong to %s", ErrOpenIDRejected, body.Sub, server)
	}
	return body.Sub, nil
}
