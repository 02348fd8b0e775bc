package admin

import (
	"context"
	"errors"
	"time"

	"github.com/herald-im/herald/keys"
)

// The console reads and changes data owned by other packages through these
// small interfaces. internal/server adapts the real services to them; tests
// use fakes. A nil dependency shows its pages as "not available".

// ErrNotFound is what an adapter returns (wrapped or not) for an unknown id.
var ErrNotFound = errors.New("not found")

// ErrNotPossible is what an adapter returns (wrapped, with the reason) when an
// action does not apply to a record's state, e.g. revoking a resolved invite.
var ErrNotPossible = errors.New("not possible")

// Invite states as the console shows them. "emailed" is a pending invite whose
// email was sent; "failed" one whose email or delivery failed for good.
const (
	StatePending  = "pending"
	StateEmailed  = "emailed"
	StateResolved = "resolved"
	StateExpired  = "expired"
	StateRevoked  = "revoked"
	StateDeclined = "declined"
	StateFailed   = "failed"
)

// InviteStates lists every state in display order.
var InviteStates = []string{StatePending, StateEmailed, StateResolved, StateExpired, StateRevoked, StateDeclined, StateFailed}

// Invite is one third-party invite.
type Invite struct {
	ID                string    `json:"id"`
	Address           string    `json:"address"`
	State             string    `json:"state"`
	RoomID            string    `json:"room_id"`
	RoomAlias         string    `json:"room_alias,omitempty"`
	RoomName          string    `json:"room_name,omitempty"`
	Sender            string    `json:"sender"`
	SenderDisplayName string    `json:"sender_display_name,omitempty"`
	Homeserver        string    `json:"homeserver"` // the inviting homeserver
	Created           time.Time `json:"created"`
	Expires           time.Time `json:"expires,omitzero"`
	MXID              string    `json:"mxid,omitempty"`     // whom the address was bound to
	MailRef           string    `json:"mail_ref,omitempty"` // the outbox ref of its emails
	// Fields are the other stored keys (room avatar, join rules, ...).
	Fields map[string]string `json:"fields,omitempty"`
	// Events are lifecycle events the invite records itself: created,
	// bound, resolved, expired, revoked, declined, resent.
	Events []Event `json:"events,omitempty"`
}

// Event is one entry of an invite's timeline.
type Event struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // created, email, bound, delivery, resolved, expired, revoked, declined, resent
	Detail string    `json:"detail,omitempty"`
	OK     bool      `json:"ok"`
	Link   string    `json:"-"`
}

// InviteFilter selects invites. Zero fields match everything.
type InviteFilter struct {
	State      string    `json:"state,omitempty"`
	Room       string    `json:"room,omitempty"` // room id or alias
	Sender     string    `json:"sender,omitempty"`
	Homeserver string    `json:"homeserver,omitempty"`
	Address    string    `json:"address,omitempty"` // normalised
	Since      time.Time `json:"since,omitzero"`    // created at or after
	Until      time.Time `json:"until,omitzero"`    // created before
	Limit      int       `json:"limit"`
	Offset     int       `json:"offset"`
}

// DayCount is one day of the dashboard chart.
type DayCount struct {
	Day      time.Time `json:"day"` // midnight UTC
	Created  int       `json:"created"`
	Resolved int       `json:"resolved"`
}

// Invites is what the console needs from the invites package.
type Invites interface {
	// ListInvites returns matching invites, newest first.
	ListInvites(ctx context.Context, f InviteFilter) ([]Invite, error)
	GetInvite(ctx context.Context, id string) (Invite, error)
	// CountInvites counts invites by state (keys from InviteStates).
	CountInvites(ctx context.Context) (map[string]int, error)
	// InvitesPerDay counts invites created and resolved on each of the last
	// days days (UTC), oldest first, today last.
	InvitesPerDay(ctx context.Context, days int) ([]DayCount, error)
	RevokeInvite(ctx context.Context, id string) error
	// ResendInvite queues the invite's email again.
	ResendInvite(ctx context.Context, id string) error
	// EraseInvites deletes every invite to address with its keys.
	EraseInvites(ctx context.Context, address string) (int, error)
}

// Attempt is one try at sending a mail or delivering to a homeserver.
type Attempt struct {
	At        time.Time `json:"at"`
	Reply     string    `json:"reply"` // the server's answer, or the error
	OK        bool      `json:"ok"`
	Temporary bool      `json:"temporary,omitempty"`
}

// Queue states shared by the outbox and the delivery queue.
const (
	QueuePending   = "pending"
	QueueDone      = "sent"      // a mail the SMTP server accepted
	QueueDelivered = "delivered" // a delivery the homeserver accepted
	QueueFailed    = "failed"
	QueueCancelled = "cancelled" // a delivery left with nothing to deliver, or dropped
)

// OutboxStates and DeliveryStates are the state filters each queue accepts,
// as docs/admin.md lists them.
var (
	OutboxStates   = []string{QueuePending, QueueDone, QueueFailed}
	DeliveryStates = []string{QueuePending, QueueDelivered, QueueFailed, QueueCancelled}
)

// QueueFilter selects queue entries.
type QueueFilter struct {
	State  string `json:"state,omitempty"`
	Limit  int    `json:"limit"`
	Offset int    `json:"offset"`
}

// QueueStats summarises a queue.
type QueueStats struct {
	Pending           int `json:"pending"`
	Done              int `json:"done"`
	Failed            int `json:"failed"`
	FailedAttempts24h int `json:"failed_attempts_24h"`
}

// Mail is one message in the outbox.
type Mail struct {
	ID          string    `json:"id"`
	To          string    `json:"to"`
	Subject     string    `json:"subject"`
	Kind        string    `json:"kind,omitempty"`
	Ref         string    `json:"ref,omitempty"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Attempts    []Attempt `json:"attempts"`
}

// Outbox is what the console needs from the mailer's queue.
type Outbox interface {
	ListMail(ctx context.Context, f QueueFilter) ([]Mail, error)
	GetMail(ctx context.Context, id string) (Mail, error)
	MailByRef(ctx context.Context, ref string) ([]Mail, error)
	RetryMail(ctx context.Context, id string) error
	DropMail(ctx context.Context, id string) error
	MailStats(ctx context.Context) (QueueStats, error)
	DeleteMailTo(ctx context.Context, address string) (int, error)
}

// Delivery is one onbind call to a homeserver, carrying one or more invites.
type Delivery struct {
	ID          string    `json:"id"`
	Homeserver  string    `json:"homeserver"`
	MXID        string    `json:"mxid"`
	Address     string    `json:"address"`
	Invites     []string  `json:"invites"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Attempts    []Attempt `json:"attempts"`
}

// Deliveries is what the console needs from the onbind delivery queue.
type Deliveries interface {
	ListDeliveries(ctx context.Context, f QueueFilter) ([]Delivery, error)
	GetDelivery(ctx context.Context, id string) (Delivery, error)
	DeliveriesForInvite(ctx context.Context, inviteID string) ([]Delivery, error)
	RetryDelivery(ctx context.Context, id string) error
	DropDelivery(ctx context.Context, id string) error
	DeliveryStats(ctx context.Context) (QueueStats, error)
	DeleteDeliveriesTo(ctx context.Context, address string) (int, error)
}

// Binding is an address bound to a Matrix ID.
type Binding struct {
	Address string    `json:"address"`
	MXID    string    `json:"mxid"`
	Bound   time.Time `json:"bound,omitzero"`
}

// Bindings is what the console needs from the identity package.
type Bindings interface {
	// BindingFor returns the address's binding, or nil when it is unbound.
	BindingFor(ctx context.Context, address string) (*Binding, error)
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

// DevMail is a mail held by the embedded dev mailbox.
type DevMail struct {
	ID      string    `json:"id"`
	To      string    `json:"to"`
	Subject string    `json:"subject"`
	Date    time.Time `json:"date"`
	Text    string    `json:"text,omitempty"`
	HTML    string    `json:"html,omitempty"`
}

// Mailbox is the dev mailbox (only when no smtp.host is configured).
type Mailbox interface {
	ListDevMail(ctx context.Context) ([]DevMail, error)
	ReadDevMail(ctx context.Context, id string) (DevMail, error)
	// DeleteDevMailTo deletes the mails addressed to (or naming) address.
	DeleteDevMailTo(ctx context.Context, address string) (int, error)
}
