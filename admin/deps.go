package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
)

// The console reads and changes data owned by other packages through these
// small interfaces, in the read models those packages define for it
// (invites.View, mailer.View, invites.DeliveryView, ...): the feature
// packages' Console types implement them (wired in internal/server); tests
// use fakes. A nil dependency shows its pages as "not available".

// ErrNotFound is what a dependency returns (wrapped or not) for an unknown
// id; the feature packages' own "no such record" errors count as it too.
var ErrNotFound = errors.New("not found")

// ErrNotPossible is what a dependency returns (wrapped, with the reason) when
// an action does not apply to a record's state, e.g. revoking a resolved
// invite; the feature packages' own state errors count as it too.
var ErrNotPossible = errors.New("not possible")

// classify wraps a feature package's "no such record" error in ErrNotFound
// and its "not possible in this state" error in ErrNotPossible, so that the
// answer and the audit log say which.
func classify(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrNotPossible):
		return err
	case errors.Is(err, invites.ErrNotFound), errors.Is(err, invites.ErrNoDelivery), errors.Is(err, mailer.ErrNotFound), errors.Is(err, mailer.ErrNoSuchFile):
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case errors.Is(err, invites.ErrState), errors.Is(err, invites.ErrDeliveryState), errors.Is(err, mailer.ErrState), errors.Is(err, identity.ErrNotBound):
		return fmt.Errorf("%w: %v", ErrNotPossible, err)
	}
	return err
}

// Invites is what the console needs from the invites package
// (invites.Console). States are invites.DisplayStates.
type Invites interface {
	// ListInvites returns matching invites, newest first.
	ListInvites(ctx context.Context, f invites.ConsoleFilter) ([]invites.View, error)
	GetInvite(ctx context.Context, id string) (invites.View, error)
	// CountInvites counts invites by state (keys from invites.DisplayStates).
	CountInvites(ctx context.Context) (map[string]int, error)
	// InvitesPerDay counts invites created and resolved on each of the last
	// days days (UTC), oldest first, today last.
	InvitesPerDay(ctx context.Context, days int) ([]invites.DayCount, error)
	RevokeInvite(ctx context.Context, id string) error
	// ResendInvite queues the invite's email again.
	ResendInvite(ctx context.Context, id string) error
	// EraseInvites deletes every invite to address with its keys.
	EraseInvites(ctx context.Context, address string) (int, error)
}

// Outbox is what the console needs from the mailer's queue (mailer.Console).
// States are mailer.ViewStates.
type Outbox interface {
	ListMail(ctx context.Context, f queue.ViewFilter) ([]mailer.View, error)
	GetMail(ctx context.Context, id string) (mailer.View, error)
	MailByRef(ctx context.Context, ref string) ([]mailer.View, error)
	RetryMail(ctx context.Context, id string) error
	DropMail(ctx context.Context, id string) error
	MailStats(ctx context.Context) (queue.StatsView, error)
	DeleteMailTo(ctx context.Context, address string) (int, error)
}

// Deliveries is what the console needs from the onbind delivery queue
// (invites.Console). States are invites.DeliveryViewStates.
type Deliveries interface {
	ListDeliveries(ctx context.Context, f queue.ViewFilter) ([]invites.DeliveryView, error)
	GetDelivery(ctx context.Context, id string) (invites.DeliveryView, error)
	DeliveriesForInvite(ctx context.Context, inviteID string) ([]invites.DeliveryView, error)
	RetryDelivery(ctx context.Context, id string) error
	DropDelivery(ctx context.Context, id string) error
	DeliveryStats(ctx context.Context) (queue.StatsView, error)
	DeleteDeliveriesTo(ctx context.Context, address string) (int, error)
}

// Bindings is what the console needs from the identity package
// (identity.Console).
type Bindings interface {
	// BindingFor returns the address's binding, or nil when it is unbound.
	BindingFor(ctx context.Context, address string) (*identity.BindingView, error)
	// Unbind removes the address's binding (and any validation state).
	Unbind(ctx context.Context, address string) error
	// EraseSessions deletes the address's email validation sessions.
	EraseSessions(ctx context.Context, address string) (int, error)
}

// Keyring is keys.Ring's administrative surface.
type Keyring interface {
	List() []keys.Key
	Rotate() (keys.Key, error)
	Retire(id string) error
}

// Mailbox is the dev mailbox (only when no smtp.host is configured;
// mailer.MailboxConsole).
type Mailbox interface {
	ListDevMail(ctx context.Context) ([]mailer.DevMailView, error)
	ReadDevMail(ctx context.Context, id string) (mailer.DevMailView, error)
	// DeleteDevMailTo deletes the mails addressed to (or naming) address.
	DeleteDevMailTo(ctx context.Context, address string) (int, error)
}
