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

// cors sets those headers on every answer of the Matrix API (/_matrix/),
// errors included, whether or not the request carries an Origin header, and
// answers every OPTIONS request there (a preflight) with 204 without running
// the endpoint's logic, as the specification requires. Nothing else gets
// CORS: the admin console and its API (a page of any origin must not read
// them with an operator's session or token) and Herald's own pages.
func cors(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !strings.HasPrefix(c.Request().URL.Path, "/_matrix/") {
			return next(c)
		}
		h := c.Response().Header()
		h.Set(echo.HeaderAccessControlAllowOrigin, corsAllowOrigin)
		h.Set(echo.HeaderAccessControlAllowMethods, corsAllowMethods)
		h.Set(echo.HeaderAccessControlAllowHeaders, corsAllowHeaders)
		if c.Request().Method == http.MethodOptions {
			return c.NoContent(http.StatusNoContent)
		}
		return next(c)
	}
}
