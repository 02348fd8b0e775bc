// Package server wires Herald's feature packages into one running server. It
// is what cmd/herald runs, and what tests start in-process.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
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
	mail      *mailer.Queue
	mailbox   *mailer.DevMailbox // nil when smtp.host is set
	onbind    *invites.Deliveries
	admin     *admin.Handler // nil when admin.enabled is false

	now       func() time.Time
	version   string
	listening func(net.Addr)

	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

// Options are test seams and build facts.
type Options struct {
	Now     func() time.Time
	Version string
	// Listening, if set, is told the address Run listens on (tests use port 0).
	Listening func(net.Addr)
}

// New opens storage and wires every service. Close releases it.
func New(cfg *config.Config, log *slog.Logger, opts Options) (_ *App, err error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	a := &App{cfg: cfg, log: log, now: opts.Now, version: opts.Version, listening: opts.Listening}
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
	if a.ephemeral, err = keys.OpenEphemeral(a.db, a.now); err != nil {
		return nil, err
	}
	a.fed = federation.New(federation.Options{
		Servers:               cfg.Federation.Servers,
		AllowPrivateAddresses: cfg.Federation.AllowPrivateAddresses,
		InsecureSkipVerify:    cfg.Federation.InsecureSkipVerify,
		Timeout:               cfg.Federation.Timeout.D(),
		UserAgent:             "Herald/" + opts.Version,
	})
	sender, mailbox, err := mailer.FromConfig(cfg)
	if err != nil {
		return nil, err
	}
	mopts := mailer.OptionsFromConfig(cfg, sender)
	mopts.Now = a.now
	if a.mail, err = mailer.Open(a.db, mopts, log); err != nil {
		return nil, err
	}
	if a.mailbox = mailbox; mailbox != nil {
		log.Info("no smtp.host: mail goes to the dev mailbox", "dir", mailbox.Dir(), "url", cfg.BaseURL()+"/_herald/mailbox")
	}
	if a.identity, err = identity.New(a.db, identity.Options{Terms: cfg.Terms, UserInfo: a.fed, Log: log, Now: a.now, Ring: a.ring, Lookup: cfg.Lookup}); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if a.invites, err = invites.New(a.db, invites.Options{Config: cfg, Identity: a.identity, Ring: a.ring, Ephemeral: a.ephemeral, Mailer: a.mail, Log: log, Now: a.now}); err != nil {
		return nil, fmt.Errorf("invites: %w", err)
	}
	log.Debug("invite email templates", "files", a.invites.TemplateFiles())
	if err = a.identity.EnableValidation(identity.ValidationOptions{
		Mail: a.mail, TemplatesDir: cfg.Email.TemplatesDir, BaseURL: cfg.BaseURL(), Brand: cfg.Email.BrandName,
		SessionLifetime: cfg.Validation.SessionLifetime.D(), ServerName: cfg.ServerName, Keys: a.fed,
		DefaultBrand: cfg.Email.DefaultBrand,
	}); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	// Binding resolves pending invites (a hook in the bind transaction) and
	// queues their onbind delivery.
	if a.onbind, err = invites.OpenDeliveries(a.invites, invites.DeliveryOptions{
		Notifier: a.fed, MinBackoff: cfg.Delivery.MinBackoff.D(), MaxBackoff: cfg.Delivery.MaxBackoff.D(),
		GiveUpAfter: cfg.Delivery.GiveUpAfter.D(), Log: log,
	}); err != nil {
		return nil, fmt.Errorf("onbind deliveries: %w", err)
	}
	if a.admin, err = a.newAdmin(); err != nil {
		return nil, fmt.Errorf("admin console: %w", err)
	}
	return a, nil
}

// Start runs the background work (key ring reloads, and the workers other
// features register here) until ctx is done or Close is called. Run calls it;
// tests that serve Handler() themselves call it too.
func (a *App) Start(ctx context.Context) {
	ctx, a.bgCancel = context.WithCancel(ctx)
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		a.reloadKeys(ctx, KeyReloadInterval)
	}()
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		if err := a.mail.Run(ctx); err != nil {
			a.log.Error("mail worker stopped", "err", err)
		}
	}()
	a.bg.Add(2)
	go func() {
		defer a.bg.Done()
		if err := a.onbind.Run(ctx); err != nil {
			a.log.Error("onbind worker stopped", "err", err)
		}
	}()
	go func() {
		defer a.bg.Done()
		a.invites.RunLifecycle(ctx, time.Minute)
	}()
}

// KeyReloadInterval is how often a running server re-reads data_dir/keys to
// pick up `herald keys rotate|retire` (tests shorten it).
var KeyReloadInterval = 10 * time.Second

// reloadKeys picks up `herald keys rotate|retire` run while Herald serves.
func (a *App) reloadKeys(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.ring.ReloadIfChanged(); err != nil {
				a.log.Error("reloading signing keys", "err", err)
			}
		}
	}
}

// Close stops background work and releases storage.
func (a *App) Close() error {
	if a.bgCancel != nil {
		a.bgCancel()
	}
	a.bg.Wait()
	return a.db.Close()
}

// Accessors for tests and the command line.

// DB is the open bbolt database.
func (a *App) DB() *bolt.DB { return a.db }

// Mailer is the outgoing mail queue.
func (a *App) Mailer() *mailer.Queue { return a.mail }

// Mailbox is the dev mailbox (nil when smtp.host is set).
func (a *App) Mailbox() *mailer.DevMailbox { return a.mailbox }

// Config is the configuration the App was built with.
func (a *App) Config() *config.Config { return a.cfg }

// Ring is the long-term signing key ring.
func (a *App) Ring() *keys.Ring { return a.ring }

// Ephemeral is the ephemeral public key store.
func (a *App) Ephemeral() *keys.Ephemeral { return a.ephemeral }

// Identity is the identity service (accounts, terms, bindings).
func (a *App) Identity() *identity.Service { return a.identity }

// Invites is the invites service.
func (a *App) Invites() *invites.Service { return a.invites }

// Deliveries is the onbind delivery queue.
func (a *App) Deliveries() *invites.Deliveries { return a.onbind }

// Handler builds the HTTP stack.
func (a *App) Handler() http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.Debug = false
	e.HTTPErrorHandler = matrix.ErrorHandler(a.log)
	e.Use(logRequests(a.log))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisablePrintStack: true, LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
		a.log.Error("panic in handler", "path", c.Path(), "err", err, "stack", string(stack))
		return err
	}}))
	e.Use(middleware.BodyLimit(fmt.Sprint(matrix.MaxBodyBytes/1024) + "K"))
	// CORS as the spec recommends, on every answer (cors.go).
	e.Use(cors)
	a.routes(e)
	return e
}
