package invites

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// The invite lifecycle: expiry, revocation, decline and opt-out by the
// invitee, and erasure of secrets after invites.retention.
//
//	invites_optout: address 0 sender -> JSON OptOut ("*" as sender: from anyone)
var bktOptOut = []byte("invites_optout")

// OptOutAnyone is the sender of an opt-out from every sender.
const OptOutAnyone = "*"

// errOptedOut is store-invite's refusal of an address that opted out.
func errOptedOut() error {
	return matrix.Forbidden("The recipient does not accept invitations through this identity server")
}

// ErrState means the action does not apply to the invite's current state.
var ErrState = errors.New("invites: not possible in the invite's state")

// OptOut records that an address wants no more invites from a sender, or
// from anyone (Sender == OptOutAnyone).
type OptOut struct {
	Address string    `json:"address"`
	Sender  string    `json:"sender"`
	Created time.Time `json:"created"`
	Via     uint64    `json:"via_invite,omitempty"` // the invite whose link was used
}

// OptedOut reports, inside tx, whether address (normalised) refuses invites
// from sender.
// A storage error reads as false (store-invite checks through queueOptedOut,
// which returns it).
func (s *Service) OptedOut(tx *store.Tx, address, sender string) bool {
	out, err := s.st.optedOut(tx, normalize("email", address), sender)
	return err == nil && out
}

// SetOptOut adds (on) or removes (!on) the opt-out of the invite's address
// from its sender (anyone: from every sender), found by the invite token.
func (s *Service) SetOptOut(token string, anyone, on bool) (*Invite, error) {
	var inv *Invite
	err := s.db.Update(func(tx *store.Tx) error {
		var err error
		if inv, err = s.ByTokenTx(tx, token); err != nil {
			return err
		}
		sender := inv.Sender
		if anyone {
			sender = OptOutAnyone
		}
		if !on {
			return s.st.deleteOptOut(tx, inv.Address, sender)
		}
		return s.st.putOptOut(tx, OptOut{Address: inv.Address, Sender: sender, Created: s.opts.Now().UTC(), Via: inv.ID})
	})
	if err == nil {
		what := "opted out of invites from the sender"
		if anyone {
			what = "opted out of all invites"
		}
		if !on {
			what = "undid an opt-out"
		}
		s.opts.Log.Info("invitee "+what, "address", matrix.RedactEmail(inv.Address), "invite", inv.ID)
	}
	return inv, err
}

// Revoke withdraws an invite: it is never delivered and its ephemeral key
// answers invalid. A pending invite, or a resolved one whose delivery has not
// yet been accepted, can be revoked. by says who did it (for the log).
func (s *Service) Revoke(id uint64, by string) error {
	err := s.db.Update(func(tx *store.Tx) error {
		inv, err := s.getTx(tx, id)
		if err != nil {
			return err
		}
		switch inv.State {
		case StatePending:
		case StateResolved:
			delivered, _, err := s.deliveryActive(tx, id)
			if err != nil {
				return err
			}
			if delivered {
				return fmt.Errorf("%w: invite %d was already delivered", ErrState, id)
			}
		default:
			return fmt.Errorf("%w: invite %d is %s", ErrState, id, inv.State)
		}
		inv.State = StateRevoked
		return s.Update(tx, inv)
	})
	if err == nil {
		s.opts.Log.Info("invite revoked", "invite", id, "by", by)
	}
	return err
}

// Decline is the invitee declining a pending invite through the link in the
// email (found by its token). undo turns a declined invite that has not
// expired back into a pending one.
func (s *Service) Decline(token string, undo bool) (*Invite, error) {
	var inv *Invite
	err := s.db.Update(func(tx *store.Tx) error {
		var err error
		if inv, err = s.ByTokenTx(tx, token); err != nil {
			return err
		}
		now := s.opts.Now()
		if undo {
			if inv.State != StateDeclined || inv.Expired(now) {
				return fmt.Errorf("%w: invite %d is %s", ErrState, inv.ID, inv.State)
			}
			inv.State = StatePending
			if err := s.Update(tx, inv); err != nil {
				return err
			}
			if inv.EphemeralPublic != "" {
				return s.opts.Ephemeral.Put(tx, inv.EphemeralPublic, fmt.Sprintf("invite:%d", inv.ID), inv.ExpiresAt)
			}
			return nil
		}
		if !inv.Pending(now) {
			return fmt.Errorf("%w: invite %d is %s", ErrState, inv.ID, inv.State)
		}
		inv.State = StateDeclined
		return s.Update(tx, inv)
	})
	if err == nil {
		s.opts.Log.Info("invite declined by the invitee", "invite", inv.ID, "undo", undo)
	}
	return inv, err
}

// sweepBatch bounds the invites one sweep transaction changes, so a sweep
// holds bbolt's only writer briefly however much is due.
const sweepBatch = 500

// ExpireDue marks every pending invite past its expiry expired (its
// ephemeral key becomes invalid) and returns how many. It seeks the expiry
// index (index.go) and works in transactions of at most sweepBatch invites:
// its cost is the number of invites due, not the number stored.
func (s *Service) ExpireDue() (int, error) { return s.expireDue(context.Background()) }

// ExpireSweep is one pass of ExpireDue, for the wiring to run once per
// period across replicas (pgstore.RunPeriodic); it logs what it did.
func (s *Service) ExpireSweep(ctx context.Context) error {
	n, err := s.expireDue(ctx)
	if n > 0 {
		s.opts.Log.Info("invites expired", "count", n)
	}
	return err
}

func (s *Service) expireDue(ctx context.Context) (int, error) {
	now := s.opts.Now()
	total := 0
	for {
		n := 0
		err := s.db.UpdateContext(ctx, func(tx *store.Tx) error {
			n = 0
			ids, err := s.st.expiryDue(tx, now, sweepBatch)
			if err != nil {
				return err
			}
			for _, id := range ids {
				inv, err := s.getTx(tx, id)
				if err != nil {
					return err
				}
				if inv.State != StatePending || !inv.Expired(now) {
					continue
				}
				inv.State = StateExpired
				inv.StateChanged = inv.ExpiresAt.UTC()
				if err := s.Update(tx, inv); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		total += n
		if err != nil || n < sweepBatch {
			return total, err
		}
	}
}

// EraseSecrets erases the token and ephemeral private key of every finished
// invite (resolved, expired, revoked, declined) whose state changed more than
// invites.retention ago; the rest of the record stays as history. A resolved
// invite is kept whole while a delivery of it is still under way. It seeks
// the erase index (index.go), oldest first, in transactions of at most
// sweepBatch invites.
func (s *Service) EraseSecrets() (int, error) { return s.eraseSecrets(context.Background()) }

// EraseSweep is one pass of EraseSecrets, for the wiring to run once per
// period across replicas (pgstore.RunPeriodic); it logs what it did.
func (s *Service) EraseSweep(ctx context.Context) error {
	n, err := s.eraseSecrets(ctx)
	if n > 0 {
		s.opts.Log.Info("invite secrets erased after retention", "count", n)
	}
	return err
}

func (s *Service) eraseSecrets(ctx context.Context) (int, error) {
	retention := s.cfg.Invites.Retention.D()
	if retention <= 0 {
		return 0, nil
	}
	cutoff := s.opts.Now().Add(-retention)
	total := 0
	var from eraseCursor // the next key to look at: kept past invites left whole
	for {
		seen, n := 0, 0
		var next eraseCursor
		err := s.db.UpdateContext(ctx, func(tx *store.Tx) error {
			seen, n = 0, 0
			ids, nx, err := s.st.eraseDue(tx, from, cutoff, sweepBatch)
			if err != nil {
				return err
			}
			next = nx
			seen = len(ids)
			for _, id := range ids {
				inv, err := s.getTx(tx, id)
				if err != nil {
					return err
				}
				if !holdsSecret(inv) || !inv.StateChanged.Before(cutoff) {
					continue
				}
				if inv.State == StateResolved {
					_, pending, err := s.deliveryActive(tx, inv.ID)
					if err != nil {
						return err
					}
					if pending {
						continue
					}
				}
				if inv.EphemeralPublic != "" && s.opts.Ephemeral != nil {
					if err := s.opts.Ephemeral.Invalidate(tx, inv.EphemeralPublic); err != nil {
						return err
					}
				}
				inv.Token, inv.EphemeralPrivate = "", ""
				if err := s.Update(tx, inv); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		total += n
		if err != nil || seen < sweepBatch {
			return total, err
		}
		from = next
	}
}

// RunLifecycle expires invites, erases old secrets and folds the counters
// every interval (and once at start) until ctx is done: the one process on
// bbolt runs it. On PostgreSQL the wiring runs ExpireSweep, EraseSweep and
// FoldCounts under pgstore.RunPeriodic instead (once per period across
// replicas).
func (s *Service) RunLifecycle(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := s.ExpireSweep(ctx); err != nil {
			s.opts.Log.Error("expiring invites", "err", err)
		}
		if err := s.EraseSweep(ctx); err != nil {
			s.opts.Log.Error("erasing invite secrets", "err", err)
		}
		if err := s.FoldCounts(ctx); err != nil {
			s.opts.Log.Error("folding invite counters", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
