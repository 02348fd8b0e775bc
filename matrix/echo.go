package matrix

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// ErrorHandler turns every error a handler returns into a Matrix error body.
// Internal errors are logged and shown only as "Internal server error"; the
// cause a *Error carries (Because) is logged with the request and not shown.
func ErrorHandler(log *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		me := toMatrix(err)
		switch {
		case me.Status >= 500 && (me.Code == "M_UNKNOWN" || me.cause != nil):
			log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
		case me.cause != nil:
			log.Warn("request refused", "method", c.Request().Method, "path", c.Path(), "errcode", me.Code, "cause", me.cause)
		}
		if c.Request().Method == http.MethodHead {
			_ = c.NoContent(me.Status)
			return
		}
		_ = c.JSON(me.Status, me.Body())
	}
}

func toMatrix(err error) *Error {
	if me, ok := AsError(err); ok {
		return me
	}
	// A temporary condition that names its wait (a database transaction that
	// kept conflicting with others until its retries ran out): "too many
	// requests, try again after this long", not a failure for good.
	var busy interface{ RetryAfter() time.Duration }
	if errors.As(err, &busy) {
		return LimitExceeded(busy.RetryAfter().Milliseconds()).Because(err)
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return NotFoundRoute()
		case http.StatusMethodNotAllowed:
			return MethodNotAllowed()
		case http.StatusRequestEntityTooLarge:
			return TooLarge("Request body too large")
		case http.StatusTooManyRequests:
			return LimitExceeded(1000)
		case http.StatusUnauthorized:
			return Unauthorized("Unauthorized")
		}
		if he.Code < 500 {
			return newErr(he.Code, "M_UNKNOWN")(http.StatusText(he.Code))
		}
	}
	return Unknown("Internal server error")
}

// Errcode is the errcode ErrorHandler answers err with (for request logs and
// metrics, which must agree with what the client saw).
func Errcode(err error) string { return toMatrix(err).Code }

// UnescapePathParams is a middleware (added with e.Use, so it runs after
// routing) that percent-decodes every path parameter: Echo routes on the raw
// path and hands parameters over still encoded, and clients may encode them
// (GET /pubkey/ed25519%3Aabc must answer like /pubkey/ed25519:abc). A value
// that is not valid percent-encoding is left as it is.
func UnescapePathParams(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		UnescapeParams(c)
		return next(c)
	}
}

// UnescapeParams is what UnescapePathParams does before the handler, for a
// stack that calls it directly. It copies the values only when one needs
// decoding (c's own slice is Echo's, reused across requests).
func UnescapeParams(c echo.Context) {
	var vals []string
	for i, v := range c.ParamValues() {
		if !strings.Contains(v, "%") {
			continue
		}
		if u, err := url.PathUnescape(v); err == nil {
			if vals == nil {
				vals = slices.Clone(c.ParamValues())
			}
			vals[i] = u
		}
	}
	if vals != nil {
		c.SetParamValues(vals...)
	}
}
