package keys

import (
	"net/http"

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

// IsValid serves GET /pubkey/isvalid?public_key=...
func (h *Handler) IsValid(c echo.Context) error {
	pub := c.QueryParam("public_key")
	if pub == "" {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	return c.JSON(http.StatusOK, map[string]bool{"valid": h.Ring.IsValidPublic(pub)})
}

// EphemeralIsValid serves GET /pubkey/ephemeral/isvalid?public_key=...
func (h *Handler) EphemeralIsValid(c echo.Context) error {
	pub := c.QueryParam("public_key")
	if pub == "" {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	ok, err := h.Ephemeral.IsValid(pub)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]bool{"valid": ok})
}
