package invites

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
)

// Upstream lookup at store-invite (lookup.upstream, docs/upstream.md): for an
// address Herald has no binding for and that never opted out, store-invite
// asks other identity servers. When one vouches for a Matrix user, the
// invite is stored as usual, the vouch is recorded with it, and, a moment
// later (UpstreamOptions.ResolveDelay: the homeserver must first write the
// m.room.third_party_invite event the onbind refers to), the invite is
// resolved for that user by the bind's own resolution (Deliveries.resolve),
// so the durable onbind queue delivers it. The email is a notice that a
// Matrix invite is waiting, or nothing (lookup.upstream_email).
//
//	invites_upstream:     invite id -> JSON Vouch
//	invites_upstream_due: resolve time (unix ns) + invite id -> nil, until resolved
var (
	bktUpstream    = []byte("invites_upstream")
	bktUpstreamDue = []byte("invites_upstream_due")
)

//go:embed templates/invite-waiting.*
var embeddedWaiting embed.FS

// WaitingTemplates are the embedded templates of the notice sent when an
// upstream vouched for the invitee (invite-waiting.subject.txt, invite-waiting.txt).
func WaitingTemplates() fs.FS {
	sub, _ := fs.Sub(embeddedWaiting, "templates")
	return sub
}

// UpstreamFunc asks the upstream identity servers about a normalised email
// address: the Matrix user one of them vouched for (with a verified
// association), and which upstream. It must return within its own timeout.
type UpstreamFunc func(ctx context.Context, address string) (mxid, upstream string, ok bool)

// UpstreamOptions configure the upstream lookup at store-invite.
type UpstreamOptions struct {
	Lookup UpstreamFunc
	// Email is lookup.upstream_email: "notify" or "none".
	Email string
	// ResolveDelay is how long after store-invite a vouched invite is
	// resolved and its onbind queued. Default 500 ms.
	ResolveDelay time.Duration
}

// Vouch records that an upstream identity server vouched for the invitee.
type Vouch struct {
	Upstream string    `json:"upstream"` // its base_url
	MXID     string    `json:"mxid"`
	At       time.Time `json:"at"` // when it answered
	Resolved time.Time `json:"resolved,omitzero"`
	// Outcome after the resolve time: "resolved", or why not (the invite had
	// been resolved by a bind, revoked, ...).
	Outcome string `json:"outcome,omitempty"`
}

type upstreamHook struct {
	opts  UpstreamOptions
	d     *Deliveries
	mail  *mailTemplates
	wake  chan struct{}
	ready bool
}

// UseUpstream turns on the upstream lookup at store-invite; d is the onbind
// queue vouched invites are resolved into. Call it before serving; RunUpstream
// resolves the vouched invites.
func (s *Service) UseUpstream(d *Deliveries, opts UpstreamOptions) error {
	if opts.Lookup == nil || d == nil {
		return errors.New("invites: UseUpstream needs a lookup and the onbind queue")
	}
	if opts.Email != "none" {
		opts.Email = "notify"
	}
	if opts.ResolveDelay <= 0 {
		opts.ResolveDelay = 500 * time.Millisecond
	}
	if err := s.st.open(s.db, partUpstream); err != nil {
		return err
	}
	t, err := mailer.LoadTemplates(WaitingTemplates(), s.cfg.Email.TemplatesDir, "invite-waiting")
	if err != nil {
		return fmt.Errorf("invite-waiting email templates: %w", err)
	}
	sample := &Invite{ID: 1, Token: "SampleToken", Medium: "email", Address: "invitee@example.org",
		RoomID: "!room:example.org", Sender: "@alice:example.org", RoomName: "Sample room", Homeserver: "example.org"}
	if err := t.Check(templateData(s.cfg, sample, t.Uses)); err != nil {
		return fmt.Errorf("invite-waiting email templates: %w", err)
	}
	s.upstream = &upstreamHook{opts: opts, d: d, mail: &mailTemplates{t: t}, wake: make(chan struct{}, 1)}
	return nil
}

// askUpstream returns the vouch for inv's address, or nil: when no upstream
// is configured, when the address opted out of anything (it is then never
// looked up), or when no upstream knows it within the timeout.
func (s *Service) askUpstream(inv *Invite) *Vouch {
	h := s.upstream
	if h == nil || inv.Medium != "email" {
		return nil
	}
	opted := false
	_ = s.db.View(func(tx *store.Tx) error {
		var err error
		opted, err = s.st.anyOptOut(tx, normalize("email", inv.Address))
		return err
	})
	if opted {
		return nil
	}
	mxid, up, ok := h.opts.Lookup(context.Background(), inv.Address)
	if !ok {
		return nil
	}
	return &Vouch{Upstream: up, MXID: mxid, At: s.opts.Now().UTC()}
}

// renderWaiting renders the notice for an invite an upstream vouched for.
func (s *Service) renderWaiting(inv *Invite) (mailer.Message, error) {
	return s.renderInviteMail(s.upstream.mail.t, "invite-waiting", inv)
}

// recordVouch writes the vouch and its resolve time inside store-invite's
// transaction.
func (s *Service) recordVouch(tx *store.Tx, id uint64, v *Vouch) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.st.putVouch(tx, id, raw); err != nil {
		return err
	}
	due := v.At.Add(s.upstream.opts.ResolveDelay)
	if err := s.st.addVouchDue(tx, due, id); err != nil {
		return err
	}
	tx.OnCommit(s.upstream.poke)
	return nil
}

func (h *upstreamHook) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// VouchFor returns the upstream's vouch for invite id, or nil.
func (s *Service) VouchFor(id uint64) (*Vouch, error) {
	var v *Vouch
	err := s.db.View(func(tx *store.Tx) error {
		v = nil
		raw, err := s.st.getVouch(tx, id)
		if err != nil || raw == nil {
			return err
		}
		v = &Vouch{}
		return json.Unmarshal(raw, v)
	})
	return v, err
}

// upstreamPoll bounds, on PostgreSQL, how long a vouch stored by another
// replica waits for this one to notice it.
const upstreamPoll = 30 * time.Second

// RunUpstream resolves vouched invites when their resolve time comes, until
// ctx is done. Those due before a restart are resolved at once.
func (s *Service) RunUpstream(ctx context.Context) error {
	h := s.upstream
	if h == nil {
		<-ctx.Done()
		return nil
	}
	for {
		next, err := s.resolveDue()
		if err != nil {
			s.opts.Log.Error("resolving vouched invites", "err", err)
			next = s.opts.Now().Add(time.Second)
		}
		idle := time.Hour
		if s.db.Backend() == store.BackendPostgres {
			// Another replica may have stored a vouch (and died before
			// resolving it): look again within upstreamPoll.
			idle = upstreamPoll
		}
		wait := idle
		if !next.IsZero() {
			wait = min(max(next.Sub(s.opts.Now()), time.Millisecond), idle)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-h.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// resolveDue resolves every vouched invite whose time has come, one
// transaction each, and returns when the next one is due (zero: none).
func (s *Service) resolveDue() (time.Time, error) {
	for {
		var next time.Time
		done := false
		err := s.db.Update(func(tx *store.Tx) error {
			next, done = time.Time{}, false
			due, id, ok, err := s.st.firstVouchDue(tx)
			if err != nil {
				return err
			}
			if !ok {
				done = true
				return nil
			}
			if s.opts.Now().Before(due) {
				next, done = due, true
				return nil
			}
			if err := s.st.deleteVouchDue(tx, due, id); err != nil {
				return err
			}
			return s.resolveVouched(tx, id)
		})
		if err != nil || done {
			return next, err
		}
	}
}

// resolveVouched resolves invite id for the user its upstream vouched for,
// through the bind's resolution (every pending invite for the address is
// resolved to that user and one onbind delivery is queued), unless it is no
// longer pending.
func (s *Service) resolveVouched(tx *store.Tx, id uint64) error {
	raw, err := s.st.getVouch(tx, id)
	if err != nil || raw == nil {
		return err
	}
	var v Vouch
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	inv, err := s.getTx(tx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	v.Resolved = s.opts.Now().UTC()
	if inv.Pending(v.Resolved) {
		// Herald's own binding wins: one made since store-invite has already
		// resolved the invite (it is then no longer pending).
		b, err := s.opts.Identity.BindingTx(tx, inv.Medium, inv.Address)
		if err != nil {
			return err
		}
		if b != nil {
			v.Outcome = "not resolved: the address is bound at this server to " + b.MXID
		} else {
			if err := s.upstream.d.resolve(tx, identity.Binding{Medium: inv.Medium, Address: inv.Address, MXID: v.MXID}); err != nil {
				return err
			}
			v.Outcome = "resolved"
			s.opts.Log.Info("invite resolved for the user an upstream identity server vouched for", "invite", id,
				"mxid", v.MXID, "upstream", v.Upstream)
		}
	} else {
		v.Outcome = "not resolved: the invite was already " + stateWord(inv)
	}
	raw, err = json.Marshal(v)
	if err != nil {
		return err
	}
	return s.st.putVouch(tx, id, raw)
}
