// Package server wires Herald's feature packages into one running server. It
// is what cmd/herald runs, and what tests start in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// App is one running Herald: every service wired together.
type App struct {
	cfg *config.Config
	log *slog.Logger
	db  *bolt.DB

	ring      *keys.Ring
	ephemeral *keys.Ephemeral
	fed       *federation.Client
	identity  *identity.Service
	invites   *invites.Service

	now     func() time.Time
	version string
}

// Options are test seams and build facts.
type Options struct {
	Now     func() time.Time
	Version string
}

// New opens storage and wires every service. Close releases it.
func New(cfg *config.Config, log *slog.Logger, opts Options) (_ *App, err error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	a := &App{cfg: cfg, log: log, now: opts.Now, version: opts.Version}
	if a.now == nil {
		a.now = time.Now
	}
	a.db, err = store.Open(cfg.DataDir, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.db.Close()
		}
	}()
	if a.ring, err = keys.OpenRing(filepath.Join(cfg.DataDir, "keys"), cfg.ServerName); err != nil {
		return nil, err
	}
	if a.ephemeral, err = keys.OpenEphemeral(a.db); err != nil {
		return nil, err
	}
	a.fed = federation.New(federation.Options{
		Servers:               cfg.Federation.Servers,
		AllowPrivateAddresses: cfg.Federation.AllowPrivateAddresses,
		InsecureSkipVerify:    cfg.Federation.InsecureSkipVerify,
		Timeout:               cfg.Federation.Timeout.D(),
		UserAgent:             "Herald/" + opts.Version,
	})
	if a.identity, err = identity.New(a.db, identity.Options{Terms: cfg.Terms, UserInfo: a.fed, Log: log, Now: a.now}); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if a.invites, err = invites.New(a.db, invites.Options{Config: cfg, Identity: a.identity, Ring: a.ring, Ephemeral: a.ephemeral, Log: log, Now: a.now}); err != nil {
		return nil, fmt.Errorf("invites: %w", err)
	}
	return a, nil
}

// Close releases storage.
func (a *App) Close() error { return a.db.Close() }

// Handler builds the HTTP stack.
func (a *App) Handler() http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.Debug = false
	e.HTTPErrorHandler = matrix.ErrorHandler(a.log)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisablePrintStack: true, LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
		a.log.Error("panic in handler", "path", c.Path(), "err", err, "stack", string(stack))
		return err
	}}))
	e.Use(middleware.BodyLimit(fmt.Sprint(matrix.MaxBodyBytes/1024) + "K"))
	// CORS as the spec recommends for every endpoint.
	e.Use(middleware.CORSWithConfig(middleware.CORSConfig{
		AllowOrigins: []string{"*"},
		AllowMethods: []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodOptions},
		AllowHeaders: []string{"X-Requested-With", "Content-Type", "Authorization"},
	}))
	a.routes(e)
	return e
}

// Run serves until ctx is done, then shuts down gracefully.
func (a *App) Run(ctx context.Context) error {
	srv := &http.Server{
		Addr:              a.cfg.Listen,
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		a.log.Info("listening", "addr", a.cfg.Listen, "base_url", a.cfg.BaseURL(), "server_name", a.cfg.ServerName)
		errc <- srv.ListenAndServe()
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
