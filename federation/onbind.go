package federation

import (
	"context"
	"encoding/json"
	"net/http"
)

// OnBindPath is where homeservers receive onbind notifications.
const OnBindPath = "/_matrix/federation/v1/3pid/onbind"

// onBindLimit caps the answer read from a homeserver.
const onBindLimit = 16 << 10

// OnBind sends an onbind notification (body: {medium, address, mxid,
// invites}) to server. Synapse and Dendrite register POST only while the spec
// says PUT, so it POSTs first and retries with PUT only when the server
// answers 404 or 405 M_UNRECOGNIZED (it does not know the POST route). The
// answer is returned whatever its status; an error means no answer arrived.
func (c *Client) OnBind(ctx context.Context, server string, body []byte) (*OnBindResponse, error) {
	resp, err := c.Do(ctx, server, http.MethodPost, OnBindPath, nil, nil, body, onBindLimit)
	if err != nil {
		return nil, err
	}
	if unrecognizedRoute(resp) {
		put, err := c.Do(ctx, server, http.MethodPut, OnBindPath, nil, nil, body, onBindLimit)
		if err != nil {
			return nil, err
		}
		return &OnBindResponse{Response: put, Method: http.MethodPut}, nil
	}
	return &OnBindResponse{Response: resp, Method: http.MethodPost}, nil
}

// OnBindResponse is the homeserver's answer and the method that got it.
type OnBindResponse struct {
	*Response
	Method string // POST, or PUT after the fallback
}

// unrecognizedRoute reports whether resp says "no such route": a 404 or 405
// that is not a Matrix error about something else (a 404 M_NOT_FOUND for an
// unknown room, say, is an answer, not a missing route).
func unrecognizedRoute(resp *Response) bool {
	if resp.Status != http.StatusNotFound && resp.Status != http.StatusMethodNotAllowed {
		return false
	}
	var e struct {
		Errcode string `json:"errcode"`
	}
	if json.Unmarshal(resp.Body, &e) != nil || e.Errcode == "" {
		return true // a plain-text 404/405 from a router
	}
	return e.Errcode == "M_UNRECOGNIZED"
}
