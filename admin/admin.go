// Package admin is Herald's operator console at /admin: server-rendered pages
// (html/template, embedded, parsed at start-up) to see, search and fix every
// invite, email and delivery, and a JSON API under /admin/api/ for every
// action. Access needs an admin account (argon2id password, signed session
// cookie, CSRF token on every form) or an API token; every action is written
// to an audit log.
package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/upstream"
)

// Prefix is where the console is served.
const Prefix = "/admin"

// Options wire the console to storage, configuration and the services it shows.
type Options struct {
	DB     *store.DB      // required: accounts, sessions, audit log
	Config *config.Config // required: admin section, settings page

	// The data the console shows; any may be nil (its pages say so).
	Invites    Invites
	Outbox     Outbox
	Deliveries Deliveries
	Bindings   Bindings
	Keys       Keyring
	Mailbox    Mailbox
	// Upstreams, if set, reports the upstream identity servers' status
	// (lookup.upstream) for the settings page.
	Upstreams func() []upstream.Status

	// NormalizeEmail normalises a searched address (identity.NormalizeEmail).
	// Default: trim and lower-case.
	NormalizeEmail func(string) (string, error)

	// Scrub, when set, runs after an erasure to overwrite what the storage
	// still holds of deleted records (freed database pages).
	Scrub func(ctx context.Context) error

	// IPExtractor is what c.RealIP() answers on the console's own listener
	// (admin.listen): the client address behind trusted_proxies, used by the
	// login limits. Default: the TCP peer (Echo's own default would believe
	// X-Forwarded-For from anyone). On the main listener the server passes
	// its address with WithClientIP.
	IPExtractor echo.IPExtractor

	// AuditPruneElsewhere, when set, stops Run from applying the audit
	// log's retention hourly: the wiring runs PruneAuditContext itself
	// (with PostgreSQL, under pgstore.RunPeriodic, once per period across
	// the replicas). Every audit write applies the bounds either way.
	AuditPruneElsewhere bool

	Log *slog.Logger
	Now func() time.Time
}

// Handler serves the console. It is an http.Handler for paths under /admin.
type Handler struct {
	opts      Options
	e         *echo.Echo
	pages     map[string]pageTemplate
	key       []byte
	limiter   *loginLimiter
	cfgUsers  map[string]string // username -> hash, from config
	apiTokens [][]byte
	lifetime  time.Duration

	handoverMu sync.Mutex // one import of handed-over accounts at a time

	auditMu  sync.Mutex // one audit write at a time, so auditN stays exact
	auditN   int        // entries in the audit bucket
	refusals refusals   // login attempts refused without an audit entry each
}

// New checks the configuration, parses every template and builds the routes.
// A template that does not parse is an error here, never at request time.
func New(opts Options) (*Handler, error) {
	if opts.DB == nil || opts.Config == nil {
		return nil, errors.New("admin: DB and Config are required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NormalizeEmail == nil {
		opts.NormalizeEmail = func(s string) (string, error) { return strings.ToLower(strings.TrimSpace(s)), nil }
	}
	if err := Open(opts.DB); err != nil {
		return nil, err
	}
	h := &Handler{opts: opts, limiter: newLoginLimiter(), cfgUsers: map[string]string{}}
	var err error
	if h.key, err = hmacKey(opts.DB); err != nil {
		return nil, err
	}
	for i, u := range opts.Config.Admin.Users {
		if err := CheckHash(string(u.PasswordHash)); err != nil {
			return nil, fmt.Errorf("config: admin.users[%d].password_hash: %w", i, err)
		}
		h.cfgUsers[u.Username] = string(u.PasswordHash)
	}
	for _, t := range opts.Config.Admin.APITokens {
		if len(t) > 0 {
			h.apiTokens = append(h.apiTokens, []byte(t))
		}
	}
	if err := h.countAudit(); err != nil {
		return nil, err
	}
	if err := h.PruneAudit(); err != nil {
		return nil, err
	}
	h.importHandovers()
	if !h.hasAccount() {
		h.opts.Log.Warn("admin console: " + NoAccountHint(opts.Config.DataDir))
	}
	h.lifetime = opts.Config.Admin.SessionLifetime.D()
	if h.lifetime <= 0 {
		h.lifetime = 12 * time.Hour
	}
	if h.pages, err = parseTemplates(); err != nil {
		return nil, err
	}
	e := echo.New()
	e.HideBanner, e.HidePort, e.Debug = true, true, false
	e.IPExtractor = opts.IPExtractor
	if e.IPExtractor == nil {
		e.IPExtractor = echo.ExtractIPDirect()
	}
	e.HTTPErrorHandler = h.errorHandler
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisablePrintStack: true, LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
		h.opts.Log.Error("admin: panic in handler", "path", c.Path(), "err", err, "stack", string(stack))
		return err
	}}))
	e.Use(securityHeaders)
	// The console's forms and API calls are small; the login form tiny
	// (routes.go). Nothing larger is read, whichever listener serves it.
	e.Use(middleware.BodyLimit("1M"))
	e.Use(matrix.UnescapePathParams) // ids in links may arrive percent-encoded
	h.routes(e)
	h.e = e
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.e.ServeHTTP(w, r) }

// Routes lists every method and path the console serves (for tests and docs).
func (h *Handler) Routes() []*echo.Route { return h.e.Routes() }

func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		hd := c.Response().Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		return next(c)
	}
}

// httpError is an error with a status the console shows as a page or JSON.
type httpError struct {
	Status int
	Msg    string
}

func (e *httpError) Error() string { return e.Msg }

func errStatus(status int, format string, args ...any) error {
	return &httpError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// errUnavailable is the answer when a dependency is not wired.
func errUnavailable(what string) error {
	return errStatus(http.StatusServiceUnavailable, "%s is not available on this server", what)
}

// fromService turns a dependency's error into something to show.
func (h *Handler) fromService(err error) error {
	err = classify(err)
	var he *httpError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &he):
		return he
	case errors.Is(err, ErrNotFound):
		return errStatus(http.StatusNotFound, "Not found")
	case errors.Is(err, ErrNotPossible):
		return errStatus(http.StatusConflict, "%s", err.Error())
	case errors.Is(err, context.Canceled):
		return errStatus(http.StatusServiceUnavailable, "Request cancelled")
	}
	return err
}

func (h *Handler) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, msg := http.StatusInternalServerError, "Internal error: see the server log"
	var he *httpError
	var ee *echo.HTTPError
	switch {
	case errors.As(err, &he):
		status, msg = he.Status, he.Msg
	case errors.As(err, &ee):
		status, msg = ee.Code, http.StatusText(ee.Code)
		if ee.Code == http.StatusNotFound {
			msg = "Page not found"
		}
	}
	if status >= 500 && he == nil {
		h.opts.Log.Error("admin: request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
	}
	if isAPI(c) {
		_ = c.JSON(status, map[string]string{"error": msg})
		return
	}
	_ = h.render(c, status, "error", "Error", "", map[string]any{"Status": status, "Message": msg})
}

func isAPI(c echo.Context) bool {
	return strings.HasPrefix(c.Request().URL.Path, Prefix+"/api/")
}

func constantTimeIn(tok []byte, set [][]byte) int {
	found := -1
	for i, s := range set {
		if subtle.ConstantTimeCompare(tok, s) == 1 {
			found = i
		}
	}
	return found
}

func asHTTP(err error, target **httpError) bool { return errors.As(err, target) }
