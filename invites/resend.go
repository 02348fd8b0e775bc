package invites

import (
	"errors"
	"fmt"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// ErrResendRefused wraps every reason an invite's email is not queued again
// (it is also an ErrState, so the console shows it as "not possible").
var ErrResendRefused = fmt.Errorf("%w: the invite email is not sent again", ErrState)

// lastMailed is when inv's email was last queued.
func (inv *Invite) lastMailed() time.Time {
	if !inv.MailedAt.IsZero() {
		return inv.MailedAt
	}
	return inv.Created
}

// resendRule is the one rule for sending an invite's email again, whether a
// homeserver repeats store-invite (the inviter invited again) or an operator
// presses "resend" in the console. The email goes again only when:
//   - the invite is pending and unexpired, and still holds its token and keys;
//   - its last email is not still waiting in the outbox (it will arrive);
//   - its last email was queued at least invites.resend_interval ago, unless
//     that email failed for good (0: no interval);
//   - the address rate limit of store-invite allows one more email.
//
// The rate limit is checked last, so a refusal for another reason costs the
// address nothing.
func (s *Service) resendRule(inv *Invite, now time.Time) error {
	if s.opts.Mailer == nil {
		return fmt.Errorf("%w: no mail queue configured", ErrResendRefused)
	}
	if !inv.Pending(now) {
		return fmt.Errorf("%w: invite %d is %s", ErrResendRefused, inv.ID, stateWord(inv))
	}
	if inv.Token == "" || inv.EphemeralPrivate == "" {
		return fmt.Errorf("%w: invite %d no longer holds its token and keys", ErrResendRefused, inv.ID)
	}
	lastFailed := false
	if inv.MailID != 0 {
		st, err := s.opts.Mailer.State(inv.MailID)
		switch {
		case errors.Is(err, mailer.ErrNotFound):
		case err != nil:
			return err
		case st == mailer.Pending:
			return fmt.Errorf("%w: its last email (mail %d) is still being delivered", ErrResendRefused, inv.MailID)
		case st == mailer.Failed:
			lastFailed = true
		}
	}
	if iv := s.cfg.Invites.ResendInterval.D(); iv > 0 && !lastFailed {
		if next := inv.lastMailed().Add(iv); now.Before(next) {
			return fmt.Errorf("%w: the last one was queued %s ago (invites.resend_interval %s)",
				ErrResendRefused, now.Sub(inv.lastMailed()).Round(time.Second), iv)
		}
	}
	if err := s.limits.allow("", "", inv.Address, ""); err != nil {
		return fmt.Errorf("%w: the address rate limit is reached", ErrResendRefused)
	}
	return nil
}

// resend applies resendRule to inv and, when it allows, queues the email
// again (rendered afresh) in one transaction that checks again that nothing
// changed meanwhile. by says who asked, for the log. It returns the new
// mail's id.
func (s *Service) resend(inv *Invite, by string) (uint64, error) {
	now := s.opts.Now().UTC()
	if err := s.resendRule(inv, now); err != nil {
		return 0, err
	}
	p, err := s.prepareMail(inv)
	if err != nil {
		return 0, err
	}
	var mailID uint64
	err = s.db.Update(func(tx *store.Tx) error {
		cur, err := s.getTx(tx, inv.ID)
		if err != nil {
			return err
		}
		// Another request may have resent or changed it since the check.
		if !cur.Pending(now) || cur.MailID != inv.MailID || cur.Token != inv.Token {
			return fmt.Errorf("%w: invite %d changed meanwhile", ErrResendRefused, inv.ID)
		}
		if mailID, err = s.opts.Mailer.EnqueuePrepared(tx, p); err != nil {
			return err
		}
		cur.MailID, cur.MailedAt = mailID, now
		return s.st.put(tx, cur)
	})
	if err != nil {
		return 0, err
	}
	s.opts.Mailer.Wake()
	s.opts.Log.Info("invite email queued again", "invite", inv.ID, "mail", mailID, "to", matrix.RedactEmail(inv.Address), "by", by)
	return mailID, nil
}
