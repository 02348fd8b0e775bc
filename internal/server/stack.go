package server

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/herald-im/herald/matrix"
)

// stack is the middleware every request runs after routing, in this order:
// the request log and metrics (logging.go), panic recovery, the body limit,
// CORS (cors.go) and the percent-decoding of path parameters. They were
// five Echo middlewares; Echo applies its middlewares to the route's handler
// anew on every request, which cost a closure allocation and an indirect
// call each, on every request. Here the log is the one Echo middleware and
// calls the rest as plain functions, and a request without a body (every
// GET) skips the body limit, whose work is wrapping the body.
type stack struct {
	a         *App
	bodyLimit echo.MiddlewareFunc
}

// middleware is the stack as one Echo middleware.
func (a *App) middleware(log *slog.Logger, m *metrics) echo.MiddlewareFunc {
	s := &stack{
		a:         a,
		bodyLimit: middleware.BodyLimit(fmt.Sprint(matrix.MaxBodyBytes/1024) + "K"),
	}
	l := &requestLog{h: log.Handler(), m: m, inner: s.serve}
	return l.middleware
}

// serve runs next under panic recovery and, when the request has a body,
// the body limit.
func (s *stack) serve(c echo.Context, next echo.HandlerFunc) error {
	defer s.recoverHandler(c)
	if body := c.Request().Body; body != nil && body != http.NoBody {
		return s.bodyLimit(func(c echo.Context) error { return serveMatrix(c, next) })(c)
	}
	return serveMatrix(c, next)
}

// serveMatrix sets the CORS headers (answering a preflight itself) and
// decodes the path parameters before next.
func serveMatrix(c echo.Context, next echo.HandlerFunc) error {
	if corsHeaders(c) {
		return c.NoContent(http.StatusNoContent)
	}
	matrix.UnescapeParams(c)
	return next(c)
}

// recoverHandler, deferred, does what Echo's Recover middleware did as
// Herald configured it: a panic in a handler is counted (Close then
// reports an unclean shutdown), logged without a stack and answered through
// the error handler (500 M_UNKNOWN); http.ErrAbortHandler goes on up, as
// net/http expects of it.
func (s *stack) recoverHandler(c echo.Context) {
	r := recover()
	if r == nil {
		return
	}
	if r == http.ErrAbortHandler {
		panic(r)
	}
	err, ok := r.(error)
	if !ok {
		err = fmt.Errorf("%v", r)
	}
	s.a.handlerPanics.Add(1)
	s.a.log.Error("panic in handler", "path", c.Path(), "err", err, "stack", "")
	c.Error(err)
}
