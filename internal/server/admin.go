package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
)

// The admin console's wiring: the feature packages' console services (each
// in its package's read models) given to package admin, and the console's
// optional separate listener.

// newAdmin builds the console (nil when admin.enabled is false).
func (a *App) newAdmin() (*admin.Handler, error) {
	if !a.cfg.Admin.Enabled {
		return nil, nil
	}
	// The feature packages' console services, in their own read models.
	console := invites.NewConsole(a.invites, a.onbind)
	opts := admin.Options{
		DB: a.db, Config: a.cfg, Log: a.log, Now: a.now, IPExtractor: a.clientIP,
		AuditPruneElsewhere: true, // a periodic job (storage.go)
		Invites:             console,
		Outbox:              mailer.NewConsole(a.mail),
		Deliveries:          console,
		Bindings:            identity.NewConsole(a.identity),
		Keys:                a.ring,
		NormalizeEmail:      identity.NormalizeEmail,
	}
	// The scrub overwrites bbolt's freed pages. PostgreSQL has no such
	// step: deleted rows stay in dead tuples until (auto)vacuum and in the
	// WAL until it is recycled (docs/security.md), so an erasure there
	// answers scrubbed false rather than failing.
	if a.bdb != nil {
		opts.Scrub = func(context.Context) error {
			_, err := store.Scrub(a.bdb, 5*time.Second)
			return err
		}
	}
	if a.mailbox != nil {
		opts.Mailbox = mailer.NewMailboxConsole(a.mailbox)
	}
	if a.upstream != nil {
		opts.Upstreams = a.upstream.Statuses
	}
	return admin.New(opts)
}

// Admin is the console's handler (nil when disabled).
func (a *App) Admin() *admin.Handler { return a.admin }

// serveAdmin serves the console on admin.listen, when set. It returns once
// the listener is bound; errc receives the server's end, and stop shuts it
// down gracefully and returns only when its requests in flight have ended
// (serve calls it before returning, so Close never closes the database under
// a console request).
func (a *App) serveAdmin(tlsConf *tls.Config) (errc <-chan error, stop func(context.Context), err error) {
	if a.admin == nil || a.cfg.Admin.Listen == "" {
		return nil, func(context.Context) {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.Admin.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("admin.listen: %w", err)
	}
	srv := a.httpServer(a.admin, tlsConf, 60*time.Second)
	ch := make(chan error, 1)
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
	}
	a.log.Info("admin console listening", "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String()+admin.Prefix)
	go func() {
		var err error
		if tlsConf != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		ch <- err
	}()
	return ch, func(ctx context.Context) { shutdown(ctx, a.log, "admin console", srv) }, nil
}

// logDevMailbox says at start-up, with no smtp.host, where mail is read:
// the console's mailbox page (nothing else serves it), and how to get an
// account for the console.
func (a *App) logDevMailbox() {
	if a.mailbox == nil {
		return
	}
	if a.admin == nil {
		a.log.Warn("no smtp.host: mail is not sent but kept as .eml files in the dev mailbox; admin.enabled is false, so read the files", "dir", a.mailbox.Dir())
		return
	}
	a.log.Warn("no smtp.host: mail is not sent but kept in the dev mailbox; read it in the admin console's Mailbox page, "+
		"logged in with an account made by `herald admin create NAME` (from a source checkout `go run ./cmd/herald admin create NAME`, same configuration, works while Herald runs)",
		"url", a.consoleURL()+admin.Prefix+"/mailbox", "dir", a.mailbox.Dir())
}

// consoleURL is where the console is reached: public_base_url, or admin.listen.
func (a *App) consoleURL() string {
	if a.cfg.Admin.Listen == "" {
		return a.cfg.BaseURL()
	}
	scheme := "http"
	if a.cfg.TLS.Enabled() {
		scheme = "https"
	}
	host := a.cfg.Admin.Listen
	if strings.HasPrefix(host, ":") {
		host = "localhost" + host
	}
	return scheme + "://" + host
}
