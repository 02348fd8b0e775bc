package federation

import "context"

// Endpoint is where Herald calls server: the base URL and the Host header
// (also the certificate name) it uses, from federation.servers or the
// server discovery rules. `herald doctor` reports it.
func (c *Client) Endpoint(ctx context.Context, server string) (baseURL, host string, err error) {
	u, h, err := c.endpoint(ctx, server)
	if err != nil {
		return "", "", err
	}
	return u.String(), h, nil
}
