package keys

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/matrix"
)

// Handler serves the pubkey endpoints (v2 and, when enabled, v1).
type Handler struct {
	Ring      *Ring
	Ephemeral *Ephemeral
}

// GetPubkey serves GET /pubkey/{keyId}.
func (h *Handler) GetPubkey(c echo.Context) error {
	k, ok := h.Ring.Published(c.Param("keyId"))
	if !ok {
		return matrix.NotFound("The public key was not found")
	}
	return c.JSON(http.StatusOK, map[string]string{"public_key": k.PublicBase64()})
}

// The two answers of the isvalid endpoints, encoded once: these endpoints
// are called for every invite a homeserver checks, and encoding/json with a
// map cost a tenth of their CPU.
var (
	validTrue  = []byte(`{"valid":true}`)
	validFalse = []byte(`{"valid":false}`)
)

func validAnswer(c echo.Context, ok bool) error {
	b := validFalse
	if ok {
		b = validTrue
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

// publicKeyParam is c.QueryParam("public_key") without parsing the query
// into a map when public_key is all the query holds (what clients send);
// anything else goes through Echo's parsing.
func publicKeyParam(c echo.Context) string {
	raw := c.Request().URL.RawQuery
	if v, ok := strings.CutPrefix(raw, "public_key="); ok && !strings.ContainsAny(v, "&;") {
		if pub, err := url.QueryUnescape(v); err == nil {
			return pub
		}
	}
	return c.QueryParam("public_key")
}

// IsValid serves GET /pubkey/isvalid?public_key=...
func (h *Handler) IsValid(c echo.Context) error {
	pub := publicKeyParam(c)
	if pub == "" {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	return validAnswer(c, h.Ring.IsValidPublic(pub))
}

// EphemeralIsValid serves GET /pubkey/ephemeral/isvalid?public_key=...
func (h *Handler) EphemeralIsValid(c echo.Context) error {
	pub := publicKeyParam(c)
	if pub == "" {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	ok, err := h.Ephemeral.IsValid(pub)
	if err != nil {
		return err
	}
	return validAnswer(c, ok)
}
