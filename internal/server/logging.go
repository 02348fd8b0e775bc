package server

import (
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"
)

// logRequests logs one line per request: method, route pattern, status and
// duration. It never logs the raw path or query string, which may carry
// access tokens, addresses or key material.
//
// It is on every request's path, so it checks the level first and hands a
// record straight to the handler: no source-location lookup (no Herald
// handler records the source) and no allocation beyond the handler's own.
func logRequests(log *slog.Logger) echo.MiddlewareFunc {
	h := log.Handler()
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			if err := next(c); err != nil {
				c.Error(err)
			}
			status := c.Response().Status
			level := slog.LevelInfo
			if status >= 500 {
				level = slog.LevelWarn
			}
			req := c.Request()
			ctx := req.Context()
			if !h.Enabled(ctx, level) {
				return nil
			}
			route := c.Path()
			if route == "" {
				route = "-" // no route matched
			}
			now := time.Now()
			r := slog.NewRecord(now, level, "request", 0)
			r.AddAttrs(
				slog.String("method", req.Method),
				slog.String("route", route),
				slog.Int("status", status),
				slog.Duration("duration", now.Sub(start)),
			)
			_ = h.Handle(ctx, r)
			return nil
		}
	}
}
