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

// jsonContentType is the Content-Type of those answers, shared: the value
// slice is full (len == cap), so an Add to the header copies it.
var jsonContentType = []string{echo.MIMEApplicationJSON}

// validAnswer writes what c.Blob(200, JSON, b) writes, setting the
// Content-Type by its canonical name to a shared value instead of through
// Header.Set, which would canonicalise it and allocate on every check.
func validAnswer(c echo.Context, ok bool) error {
	b := validFalse
	if ok {
		b = validTrue
	}
	resp := c.Response()
	if h := resp.Header(); len(h[echo.HeaderContentType]) == 0 {
		h[echo.HeaderContentType] = jsonContentType
	}
	resp.WriteHeader(http.StatusOK)
	_, err := resp.Write(b)
	return err
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

// keyBufSize bounds the public_key values decoded without allocating: an
// ed25519 key is 43 characters of base64, fewer than 90 escaped.
const keyBufSize = 128

// publicKeyBytes is publicKeyParam decoded into buf, so that a check of a
// key allocates nothing for it, when public_key is all the query holds and
// its value fits buf; anything else goes through publicKeyParam. The
// decoding is url.QueryUnescape's ('+' is a space, %XX a byte); a value
// it would refuse goes through publicKeyParam too, which answers as
// before.
func publicKeyBytes(c echo.Context, buf *[keyBufSize]byte) []byte {
	raw := c.Request().URL.RawQuery
	if v, ok := strings.CutPrefix(raw, "public_key="); ok && len(v) <= len(buf) && !strings.ContainsAny(v, "&;") {
		if n, ok := queryUnescapeInto(buf[:], v); ok {
			return buf[:n]
		}
	}
	return []byte(publicKeyParam(c))
}

// queryUnescapeInto decodes v as url.QueryUnescape does into dst (at least
// len(v) long), returning the length; ok is false where QueryUnescape
// returns an error (a '%' not followed by two hex digits).
func queryUnescapeInto(dst []byte, v string) (n int, ok bool) {
	for i := 0; i < len(v); i++ {
		switch ch := v[i]; ch {
		case '%':
			if i+2 >= len(v) || !isHex(v[i+1]) || !isHex(v[i+2]) {
				return 0, false
			}
			dst[n] = unhex(v[i+1])<<4 | unhex(v[i+2])
			i += 2
		case '+':
			dst[n] = ' '
		default:
			dst[n] = ch
		}
		n++
	}
	return n, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// IsValid serves GET /pubkey/isvalid?public_key=...
func (h *Handler) IsValid(c echo.Context) error {
	var buf [keyBufSize]byte
	pub := publicKeyBytes(c, &buf)
	if len(pub) == 0 {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	return validAnswer(c, h.Ring.isValidPublic(pub))
}

// EphemeralIsValid serves GET /pubkey/ephemeral/isvalid?public_key=...
func (h *Handler) EphemeralIsValid(c echo.Context) error {
	var buf [keyBufSize]byte
	pub := publicKeyBytes(c, &buf)
	if len(pub) == 0 {
		return matrix.MissingParams("Missing parameter: public_key")
	}
	ok, err := h.Ephemeral.isValid(pub)
	if err != nil {
		return err
	}
	return validAnswer(c, ok)
}
