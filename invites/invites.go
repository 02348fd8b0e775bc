// Package invites handles third-party invites: store-invite, the invite
// email, signing for the invitee, resolution on bind and the onbind delivery
// (delivery.go), and the invite lifecycle: expiry, opt-outs, erasure
// (lifecycle.go).
//
// Storage (store.go, storage.go): one record per invite plus token, address,
// state and de-duplication indexes, in bbolt (storage_bolt.go) or PostgreSQL
// (storage_pg.go). store-invite writes the invite, its
// ephemeral key and its outgoing email (the mailer outbox) in one
// transaction and wakes the mail worker after the commit.
package invites

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// Options configure a Service.
type Options struct {
	Config    *config.Config
	Identity  *identity.Service
	Ring      *keys.Ring
	Ephemeral *keys.Ephemeral
	// Mailer is the outbox invite emails are queued in. Nil: invites are
	// stored but no email is queued (a warning is logged).
	Mailer *mailer.Queue
	Log    *slog.Logger
	Now    func() time.Time
	// OnStore, if set, is told how every store-invite ended (outcome
	// "stored", "deduplicated" or "refused", and for refusals a reason such as
	// "rate_limited" or "policy"). Metrics count these.
	OnStore func(outcome, reason string)
	// StoreTxHook, if set, runs at the end of store-invite's write
	// transaction, after the invite, its ephemeral key and its mail are
	// written; its error aborts the transaction. Tests use it to fail or
	// observe that transaction.
	StoreTxHook func() error
}

// Service is the invites feature.
type Service struct {
	db     *store.DB
	st     storage // storage_bolt.go or storage_pg.go, from db's backend
	opts   Options
	cfg    *config.Config
	mail   *mailTemplates
	limits *limits
	policy *policy
	// upstream, when set (UseUpstream), asks other identity servers at
	// store-invite (upstream.go).
	upstream *upstreamHook
	sent     sentMails // mails known sent, for the console's states (console.go)
	// dq reads the onbind deliveries inside the invites' transactions
	// (set by OpenDeliveries; nil: no delivery exists for this service).
	dq queue.Backend

	// changedMail holds the mail versions (email.go) already logged as
	// changed since their mails were queued.
	changedMail sync.Map
}

// New creates the invites buckets, loads and checks the email templates and
// returns the service. A broken template is an error naming the file.
func New(db *store.DB, opts Options) (*Service, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Config == nil {
		c := config.Default()
		opts.Config = &c
	}
	if opts.Identity == nil || opts.Ring == nil || opts.Ephemeral == nil {
		return nil, errors.New("invites: Options need Identity, Ring and Ephemeral")
	}
	st := newStorage(db)
	if err := st.open(db, partInvites); err != nil {
		return nil, err
	}
	// A bbolt data dir from schema version 1 gets its sweep indexes and
	// counters once (index_bolt.go); PostgreSQL has them from its first
	// migration.
	if db.Backend() == store.BackendBolt {
		if n, err := rebuildIndexes(db); err != nil {
			return nil, fmt.Errorf("invites: building indexes: %w", err)
		} else if n > 0 {
			opts.Log.Info("invites: indexes and counters built for the stored invites", "count", n)
		}
	}
	s := &Service{db: db, st: st, opts: opts, cfg: opts.Config}
	var err error
	if s.mail, err = loadMailTemplates(opts.Config); err != nil {
		return nil, err
	}
	if s.policy, err = newPolicy(opts.Config.Invites); err != nil {
		return nil, err
	}
	s.limits = newLimits(opts.Config.Invites, opts.Now)
	if opts.Mailer != nil {
		// Invite emails are rendered when they are sent (email.go).
		opts.Mailer.SetRenderer("invite", s.renderQueued)
	}
	return s, nil
}

// DB is the database the invites live in.
func (s *Service) DB() *store.DB { return s.db }

// Options returns the options the service was built with.
func (s *Service) Options() Options { return s.opts }

// Now is the service's clock.
func (s *Service) Now() time.Time { return s.opts.Now() }
