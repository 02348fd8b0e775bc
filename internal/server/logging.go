package server

import (
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/matrix"
)

// errcodeKey is where a handler that writes a Matrix error itself (rather
// than returning it) leaves the errcode for the request log.
const errcodeKey = "herald.errcode"

// requestLog is the middleware that logs one line per request: method,
// route pattern, status, duration, the client address (c.RealIP(): the
// peer, or behind a trusted proxy the address it forwarded) and, for
// errors, the errcode the client got. It never logs the raw path or query
// string, which may carry access tokens, addresses or key material. It
// also counts the request in m.
//
// It is on every request's path, so it checks the level first and hands a
// record straight to the handler: no source-location lookup (no Herald
// handler records the source) and no allocation beyond the handler's own.
// inner, when set, runs between the log and the handler (the rest of the
// stack, stack.go), so that the whole stack costs Echo one middleware, and
// one closure, per request.
type requestLog struct {
	h     slog.Handler
	m     *metrics
	inner func(c echo.Context, next echo.HandlerFunc) error
}

func (l *requestLog) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error { return l.serve(c, next) }
}

func (l *requestLog) serve(c echo.Context, next echo.HandlerFunc) error {
	h, m := l.h, l.m
	start := time.Now()
	var err error
	if l.inner != nil {
		err = l.inner(c, next)
	} else {
		err = next(c)
	}
	if err != nil {
		c.Error(err)
	}
	status := c.Response().Status
	route := c.Path()
	if route == "" {
		route = "-" // no route matched
	}
	now := time.Now()
	if m != nil {
		mroute := route
		if route == "-" {
			mroute = "unmatched"
		}
		m.observeRequest(mroute, c.Request().Method, status, now.Sub(start))
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	req := c.Request()
	ctx := req.Context()
	if !h.Enabled(ctx, level) {
		return nil
	}
	r := slog.NewRecord(now, level, "request", 0)
	r.AddAttrs(
		slog.String("method", req.Method),
		slog.String("route", route),
		slog.Int("status", status),
		slog.Duration("duration", now.Sub(start)),
		slog.String("client", c.RealIP()),
	)
	if err != nil && status >= 400 {
		r.AddAttrs(slog.String("errcode", matrix.Errcode(err)))
	} else if status >= 400 {
		if code, ok := c.Get(errcodeKey).(string); ok {
			r.AddAttrs(slog.String("errcode", code))
		}
	}
	_ = h.Handle(ctx, r)
	return nil
}
