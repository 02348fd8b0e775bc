// Package server wires Herald's feature packages into one running server. It
// is what cmd/herald runs, and what tests start in-process.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/sydent"
	"github.com/herald-im/herald/upstream"
)

// App is one running Herald: every service wired together.
type App struct {
	cfg *config.Config
	log *slog.Logger
	// db is the database every service uses; bdb is its bbolt file, for
	// what only bbolt has (backup snapshots, page statistics, the path),
	// nil on PostgreSQL.
	db  *store.DB
	bdb *bolt.DB

	ring      *keys.Ring
	ephemeral *keys.Ephemeral
	fed       *federation.Client
	identity  *identity.Service
	invites   *invites.Service
	mail      *mailer.Queue
	mailbox   *mailer.DevMailbox // nil when smtp.host is set
	onbind    *invites.Deliveries
	admin     *admin.Handler // nil when admin.enabled is false

	upstream *upstream.Service // nil when lookup.upstream is empty (upstream.go)

	now       func() time.Time
	version   string
	listening func(net.Addr)
	control   ControlHandler
	intervals Intervals

	sydentImport *sydent.Imported // what `herald import sydent` left (sydent.go); nil: none

	// Observability (metrics.go, health.go, clientip.go).
	metrics          *metrics
	metricsListening func(net.Addr)
	clientIP         echo.IPExtractor
	dbFile           os.FileInfo // data_dir/herald.db as opened, for /_herald/ready
	workers          workers
	notReady         atomic.Pointer[string] // the last readiness answered ("" ready), to log changes

	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	// Signs of a damaged database during this run (bbolt panics on damaged
	// pages): with any, Close leaves no clean shutdown marker and the next
	// start runs the full consistency check (store/clean.go).
	commit          *store.Committer
	handlerPanics   atomic.Uint64
	bgPanicsAtStart uint64
}

// Options are test seams and build facts.
type Options struct {
	Now     func() time.Time
	Version string
	// Listening, if set, is told the address Run listens on (tests use port 0).
	Listening func(net.Addr)
	// MetricsListening, if set, is told the address of metrics.listen.
	MetricsListening func(net.Addr)
	// Control, if set, answers commands on data_dir/control.sock while Run serves.
	Control ControlHandler
	// Intervals of the background work; zero fields take DefaultIntervals'.
	Intervals Intervals
	// StoreInviteTxHook, if set, is invites.Options.StoreTxHook: it runs at
	// the end of store-invite's write transaction (tests fail or observe it).
	StoreInviteTxHook func() error
}

// Intervals are how often the background work runs and how it restarts
// after a panic. Tests shorten them through Options instead of changing
// package state, so they can run in parallel.
type Intervals struct {
	// KeyReload: how often data_dir/keys is re-read to pick up `herald keys
	// rotate|retire` run while Herald serves.
	KeyReload time.Duration
	// Handover: how often the accounts `herald admin create` hands over are
	// taken.
	Handover time.Duration
	// Restart: background.Runner's first pause before restarting work that
	// panicked.
	Restart time.Duration
	// Stats: how long the stored-data gauges of /metrics are cached.
	Stats time.Duration
}

// DefaultIntervals are the production intervals.
var DefaultIntervals = Intervals{KeyReload: 10 * time.Second, Handover: time.Second, Restart: time.Second, Stats: 15 * time.Second}

func (iv Intervals) orDefaults() Intervals {
	d := DefaultIntervals
	for _, f := range []struct{ v, def *time.Duration }{{&iv.KeyReload, &d.KeyReload}, {&iv.Handover, &d.Handover}, {&iv.Restart, &d.Restart}, {&iv.Stats, &d.Stats}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return iv
}

// New opens storage and wires every service. Close releases it.
func New(cfg *config.Config, log *slog.Logger, opts Options) (_ *App, err error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	a := &App{cfg: cfg, log: log, now: opts.Now, version: opts.Version, listening: opts.Listening, metricsListening: opts.MetricsListening, control: opts.Control,
		intervals: opts.Intervals.orDefaults()}
	if a.now == nil {
		a.now = time.Now
	}
	if a.clientIP, err = clientIPExtractor(cfg.TrustedProxies); err != nil {
		return nil, err
	}
	a.metrics = newMetrics(a)
	// data_dir/herald.db or PostgreSQL, as storage.backend says (storage.go).
	if err = a.openStorage(); err != nil {
		return nil, err
	}
	a.bgPanicsAtStart = background.Panics()
	defer func() {
		if err != nil {
			a.db.Close()
		}
	}()
	if a.bdb == nil {
		a.ring, err = openKeysPostgres(cfg, a.db, log)
	} else {
		// The keys must be the ones the database was used with (datadir.go).
		a.ring, err = openKeys(cfg, a.db, log)
	}
	if err != nil {
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
	sender, mailbox, err := mailer.FromConfigDB(cfg, a.db)
	if err != nil {
		return nil, err
	}
	mopts := mailer.OptionsFromConfig(cfg, sender)
	mopts.Now = a.now
	mopts.OnSend = func(result, class string) { a.metrics.mailSends.WithLabelValues(result, class).Inc() }
	if a.mail, err = mailer.Open(a.db, mopts, log); err != nil {
		return nil, err
	}
	a.mailbox = mailbox
	if a.identity, err = identity.New(a.db, identity.Options{Terms: cfg.Terms, UserInfo: a.fed, Log: log, Now: a.now, Ring: a.ring, Lookup: cfg.Lookup,
		TokenIdleLifetime: cfg.Account.TokenIdleLifetime.D(),
		OnLookup: func(api string, n, found int) {
			a.metrics.lookups.WithLabelValues(api).Add(float64(n))
			a.metrics.lookupHits.WithLabelValues(api).Add(float64(found))
		}}); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if a.invites, err = invites.New(a.db, invites.Options{Config: cfg, Identity: a.identity, Ring: a.ring, Ephemeral: a.ephemeral, Mailer: a.mail, Log: log, Now: a.now, StoreTxHook: opts.StoreInviteTxHook,
		OnStore: func(outcome, reason string) { a.metrics.storeInv.WithLabelValues(outcome, reason).Inc() }}); err != nil {
		return nil, fmt.Errorf("invites: %w", err)
	}
	if err = a.loadSydentImport(); err != nil {
		return nil, err
	}
	log.Debug("invite email templates", "files", a.invites.TemplateFiles())
	if err = a.identity.EnableValidation(identity.ValidationOptions{
		Mail: a.mail, TemplatesDir: cfg.Email.TemplatesDir, BaseURL: cfg.BaseURL(), Brand: cfg.Email.BrandName,
		SessionLifetime: cfg.Validation.SessionLifetime.D(), ServerName: cfg.ServerName, Keys: a.fed,
		Limits: identity.ValidationLimits{Address: cfg.Validation.RateLimits.Address,
			Account: cfg.Validation.RateLimits.Account, ClientIP: cfg.Validation.RateLimits.ClientIP},
		DefaultBrand: cfg.Email.DefaultBrand,
	}); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	// Binding resolves pending invites (a hook in the bind transaction) and
	// queues their onbind delivery.
	if a.onbind, err = invites.OpenDeliveries(a.invites, invites.DeliveryOptions{
		Notifier: a.fed, MinBackoff: cfg.Delivery.MinBackoff.D(), MaxBackoff: cfg.Delivery.MaxBackoff.D(),
		GiveUpAfter: cfg.Delivery.GiveUpAfter.D(), Log: log,
		OnAttempt: func(result string) { a.metrics.onbind.WithLabelValues(result).Inc() },
	}); err != nil {
		return nil, fmt.Errorf("onbind deliveries: %w", err)
	}
	// Store-invite asks lookup.upstream about unbound addresses (upstream.go).
	if err = a.wireUpstream(); err != nil {
		return nil, fmt.Errorf("upstream lookup: %w", err)
	}
	if a.admin, err = a.newAdmin(); err != nil {
		return nil, fmt.Errorf("admin console: %w", err)
	}
	a.logDevMailbox()
	return a, nil
}

// Start runs the background work (key ring reloads, and the workers other
// features register here) until ctx is done or Close is called. Run calls it;
// tests that serve Handler() themselves call it too. Each task runs under
// background.Run: a panic in it is logged and counted
// (background.Panics), the task restarts after a pause, and the server
// keeps serving.
func (a *App) Start(ctx context.Context) {
	ctx, a.bgCancel = context.WithCancel(ctx)
	a.workers.starting(ctx, "keys", "mail", "onbind", "lifecycle")
	a.goBackground(ctx, "keys", "signing key reload", func(ctx context.Context) error {
		a.reloadKeys(ctx, a.intervals.KeyReload)
		return nil
	})
	a.goBackground(ctx, "", "lookup index warm-up", func(ctx context.Context) error {
		start := time.Now()
		if err := a.identity.WarmLookups(ctx); err != nil {
			return err
		}
		a.log.Debug("lookup index built", "took", time.Since(start).Round(time.Millisecond).String())
		return nil
	})
	a.goBackground(ctx, "mail", "mail worker", a.mail.Run)
	a.goBackground(ctx, "onbind", "onbind worker", a.onbind.Run)
	// The sweeps (storage.go's table): once per period across replicas on
	// PostgreSQL.
	a.startPeriodic(ctx)
	a.wakeQueues(ctx)
	if a.upstream != nil {
		// Invites an upstream vouched for are resolved a moment after store-invite.
		a.goBackground(ctx, "", "upstream invite resolution", a.invites.RunUpstream)
		a.goBackground(ctx, "", "upstream registration", func(ctx context.Context) error {
			a.upstream.Register(ctx)
			return nil
		})
	}
	if a.db.PG() != nil {
		a.goBackground(ctx, "", "lookup pepper refresh", func(ctx context.Context) error {
			// A pepper rotated on any replica (identity.PepperChannel).
			a.followChanges(ctx, identity.PepperChannel, a.intervals.KeyReload, "reloading the lookup pepper", a.identity.Refresh)
			return nil
		})
	}
	if a.admin != nil {
		// The count of refused console logins (audit retention is a
		// periodic job: storage.go).
		a.goBackground(ctx, "", "console login summary", func(ctx context.Context) error {
			a.admin.Run(ctx)
			return nil
		})
	}
	if a.admin != nil {
		// Accounts `herald admin create` hands over when it cannot use the
		// control socket.
		a.goBackground(ctx, "", "admin account hand-over", func(ctx context.Context) error {
			a.admin.WatchHandovers(ctx, a.intervals.Handover)
			return nil
		})
	}
}

// goBackground runs fn under background.Run until ctx is done; Close waits
// for it. worker names it for readiness (/_herald/ready) and the panic
// metric; "" for housekeeping that readiness does not depend on.
func (a *App) goBackground(ctx context.Context, worker, name string, fn func(context.Context) error) {
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		var err error
		background.Runner{Log: a.log, RestartDelay: a.intervals.Restart}.Run(ctx, name, func(ctx context.Context) error {
			defer func() {
				if r := recover(); r != nil {
					if worker != "" {
						a.BackgroundPanic(worker)
					}
					panic(r) // background.Run logs, counts and restarts it
				}
			}()
			err = fn(ctx)
			return err
		})
		if worker != "" {
			a.workers.stopped(worker, err)
		}
	}()
}

// reloadKeys picks up `herald keys rotate|retire` run while Herald serves.
func (a *App) reloadKeys(ctx context.Context, every time.Duration) {
	if a.db.PG() != nil {
		// A key rotated or retired on any replica (keys.NotifyChannel).
		a.followChanges(ctx, keys.NotifyChannel, every, "reloading signing keys",
			func(ctx context.Context) error { return a.ring.Reload(ctx, false) })
		return
	}
	background.Every(ctx, every, func() {
		if err := a.ring.ReloadIfChanged(); err != nil {
			a.log.Error("reloading signing keys", "err", err)
		}
	})
}

// Close stops background work and releases storage.
func (a *App) Close() error {
	if a.bgCancel != nil {
		a.bgCancel()
	}
	a.bg.Wait()
	clean := a.handlerPanics.Load() == 0 && background.Panics() == a.bgPanicsAtStart && (a.commit == nil || a.commit.Panics() == 0)
	return a.closeStorage(clean)
}

// Accessors for tests and the command line.

// DB is the open database.
func (a *App) DB() *store.DB { return a.db }

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
	e.IPExtractor = a.clientIP
	// The request log and metrics, panic recovery, the body limit, CORS as
	// the spec recommends (cors.go), and path parameters percent-decoded
	// (clients may encode them): one middleware (stack.go).
	e.Use(a.middleware(a.log, a.metrics))
	a.routes(e)
	return e
}
