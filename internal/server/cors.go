package server

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// The CORS headers the Matrix specification recommends servers return on
// all requests ("Web Browser Clients"), plus Origin and Accept, which some
// clients list in their preflights.
const (
	corsAllowOrigin  = "*"
	corsAllowMethods = "GET, POST, PUT, DELETE, OPTIONS"
	corsAllowHeaders = "X-Requested-With, Content-Type, Authorization, Origin, Accept"
)

var (
	corsOriginValue  = []string{corsAllowOrigin}
	corsMethodsValue = []string{corsAllowMethods}
	corsHeadersValue = []string{corsAllowHeaders}
)

// corsHeaders sets those headers on every answer of the Matrix API
// (/_matrix/), errors included, whether or not the request carries an
// Origin header; it reports a preflight (an OPTIONS request there), which
// the caller answers with 204 without running the endpoint's logic, as the
// specification requires (serveMatrix in stack.go). Nothing else gets
// CORS: the admin console and its API (a page of any origin must not read
// them with an operator's session or token) and Herald's own pages.
func corsHeaders(c echo.Context) (preflight bool) {
	if !strings.HasPrefix(c.Request().URL.Path, "/_matrix/") {
		return false
	}
	// The header names are already canonical and the values shared
	// (Header.Set would canonicalise and allocate a slice for each, on
	// every request). Each value slice is full (len == cap), so an Add
	// to one of these headers copies it rather than write into it.
	h := c.Response().Header()
	h[echo.HeaderAccessControlAllowOrigin] = corsOriginValue
	h[echo.HeaderAccessControlAllowMethods] = corsMethodsValue
	h[echo.HeaderAccessControlAllowHeaders] = corsHeadersValue
	return c.Request().Method == http.MethodOptions
}
