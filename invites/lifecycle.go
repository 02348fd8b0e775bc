package invites

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/identity"
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

func init() {
	RegisterSetup(func(s *Service) error { return store.Buckets(s.db, bktOptOut) })
	RegisterStoreCheck(func(s *Service, tx *bolt.Tx, inv *Invite) error {
		if s.OptedOut(tx, inv.Address, inv.Sender) {
			return matrix.Forbidden("The recipient does not accept invitations through this identity server")
		}
		return nil
	})
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
func (s *Service) OptedOut(tx *bolt.Tx, address, sender string) bool {
	b := tx.Bucket(bktOptOut)
	if b == nil {
		return false
	}
	address = normalize("email", address)
	return b.Get(join0(address, OptOutAnyone)) != nil || b.Get(join0(address, sender)) != nil
}

// SetOptOut adds (on) or removes (!on) the opt-out of the invite's address
// from its sender (anyone: from every sender), found by the invite token.
func (s *Service) SetOptOut(token string, anyone, on bool) (*Invite, error) {
	var inv *Invite
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if inv, err = s.ByTokenTx(tx, token); err != nil {
			return err
		}
		sender := inv.Sender
		if anyone {
			sender = OptOutAnyone
		}
		key := join0(inv.Address, sender)
		if !on {
			return tx.Bucket(bktOptOut).Delete(key)
		}
		raw, err := json.Marshal(OptOut{Address: inv.Address, Sender: sender, Created: s.opts.Now().UTC(), Via: inv.ID})
		if err != nil {
			return err
		}
		return tx.Bucket(bktOptOut).Put(key, raw)
	})
	if err == nil {
		what := "opted out of invites from the sender"
		if anyone {
			what = "opted out of all invites"
		}
		if !on {
			what = "undid an opt-out"
		}
		s.opts.Log.Info("invitee "+what, "address", identity.RedactEmail(inv.Address), "invite", inv.ID)
	}
	return inv, err
}

// Revoke withdraws an invite: it is never delivered and its ephemeral key
// answers invalid. A pending invite, or a resolved one whose delivery has not
// yet been accepted, can be revoked. by says who did it (for the log).
func (s *Service) Revoke(id uint64, by string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		inv, err := getTx(tx, id)
		if err != nil {
			return err
		}
		switch inv.State {
		case StatePending:
		case StateResolved:
			delivered, _, err := deliveryActive(tx, id)
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
	err := s.db.Update(func(tx *bolt.Tx) error {
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

// ExpireDue marks every pending invite past its expiry expired (its
// ephemeral key becomes invalid) and returns how many.
func (s *Service) ExpireDue() (int, error) {
	n := 0
	now := s.opts.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		return s.EachInState(tx, StatePending, func(inv *Invite) error {
			if !inv.Expired(now) {
				return nil
			}
			inv.State = StateExpired
			inv.StateChanged = inv.ExpiresAt.UTC()
			n++
			return s.Update(tx, inv)
		})
	})
	return n, err
}

// EraseSecrets erases the token and ephemeral private key of every finished
// invite (resolved, expired, revoked, declined) whose state changed more than
// invites.retention ago; the rest of the record stays as history. A resolved
// invite is kept whole while a delivery of it is still under way.
func (s *Service) EraseSecrets() (int, error) {
	retention := s.cfg.Invites.Retention.D()
	if retention <= 0 {
		return 0, nil
	}
	cutoff := s.opts.Now().Add(-retention)
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, state := range []string{StateResolved, StateExpired, StateRevoked, StateDeclined} {
			err := s.EachInState(tx, state, func(inv *Invite) error {
				if inv.Token == "" && inv.EphemeralPrivate == "" {
					return nil
				}
				if !inv.StateChanged.Before(cutoff) {
					return nil
				}
				if state == StateResolved {
					_, pending, err := deliveryActive(tx, inv.ID)
					if err != nil || pending {
						return err
					}
				}
				if inv.EphemeralPublic != "" {
					if err := s.opts.Ephemeral.Invalidate(tx, inv.EphemeralPublic); err != nil {
						return err
					}
				}
				inv.Token, inv.EphemeralPrivate = "", ""
				n++
				return s.Update(tx, inv)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// RunLifecycle expires invites and erases old secrets every interval (and
// once at start) until ctx is done.
func (s *Service) RunLifecycle(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n, err := s.ExpireDue(); err != nil {
			s.opts.Log.Error("expiring invites", "err", err)
		} else if n > 0 {
			s.opts.Log.Info("invites expired", "count", n)
		}
		if n, err := s.EraseSecrets(); err != nil {
			s.opts.Log.Error("erasing invite secrets", "err", err)
		} else if n > 0 {
			s.opts.Log.Info("invite secrets erased after retention", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
