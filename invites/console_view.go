package invites

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/herald-im/herald/queue"
)

// The console's read models and read service for invites and onbind
// deliveries. The admin console uses these types as they are (their JSON is
// the console API's) through its Invites and Deliveries interfaces, which
// Console implements: the conversions from the stored records live here,
// beside the records, and the console keeps no copies of them.

// View is an invite as the console shows it.
type View struct {
	ID                string    `json:"id"`
	Address           string    `json:"address"`
	State             string    `json:"state"` // one of DisplayStates
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
	// Events are the invite's own timeline (Timeline), with its upstream
	// vouch in GetInvite.
	Events []Event `json:"events,omitempty"`
}

// ConsoleFilter selects invites by displayed state. Zero fields match
// everything.
type ConsoleFilter struct {
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

// DeliveryViewStates are the states the console filters deliveries by.
var DeliveryViewStates = []string{string(DeliveryPending), string(DeliveryDelivered), string(DeliveryFailed), string(DeliveryCancelled)}

// DeliveryView is an onbind delivery as the console shows it.
type DeliveryView struct {
	ID          string              `json:"id"`
	Homeserver  string              `json:"homeserver"`
	MXID        string              `json:"mxid"`
	Address     string              `json:"address"`
	Invites     []string            `json:"invites"`
	State       string              `json:"state"`
	Created     time.Time           `json:"created"`
	NextAttempt time.Time           `json:"next_attempt,omitzero"`
	Attempts    []queue.AttemptView `json:"attempts"`
}

// Console is the console's read service (and its few actions) over the
// invites and their deliveries. Deliveries may be nil: no delivery is then
// listed or counted as failed.
type Console struct {
	s    *Service
	dels *Deliveries
}

// NewConsole returns the console's service over s and dels.
func NewConsole(s *Service, dels *Deliveries) *Console { return &Console{s: s, dels: dels} }

// parseConsoleID parses a console id; an invalid one is notFound naming it.
func parseConsoleID(id string, notFound error) (uint64, error) {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("id %q: %w", id, notFound)
	}
	return n, nil
}

// failedDeliveries yields the invites of failed deliveries (none without the queue).
func (c *Console) failedDeliveries(yield func(uint64) bool) {
	if c.dels != nil {
		c.dels.FailedDeliveryInvites(yield)
	}
}

// View is inv as the console shows it, its state derived (DisplayState).
func (s *Service) View(inv *Invite, now time.Time) View {
	id := strconv.FormatUint(inv.ID, 10)
	out := View{
		ID: id, Address: inv.Address, State: s.DisplayState(inv, now), RoomID: inv.RoomID, RoomAlias: inv.RoomAlias, RoomName: inv.RoomName,
		Sender: inv.Sender, SenderDisplayName: inv.SenderDisplayName, Homeserver: inv.Homeserver, Created: inv.Created,
		Expires: inv.ExpiresAt, MXID: inv.ResolvedMXID, MailRef: "invite:" + id, Fields: map[string]string{},
	}
	for k, v := range map[string]string{
		"room_avatar_url": inv.RoomAvatarURL, "room_join_rules": inv.RoomJoinRules, "room_type": inv.RoomType,
		"sender_avatar_url": inv.SenderAvatarURL, "org.matrix.web_client_location": inv.WebClientLocation,
		"key_id": inv.KeyID, "ephemeral_public_key": inv.EphemeralPublic, "api": inv.Via,
	} {
		if v != "" {
			out.Fields[k] = v
		}
	}
	for k, v := range inv.Extra {
		out.Fields[k] = string(v)
	}
	if inv.Token == "" {
		out.Fields["token"] = "(erased after the retention period)"
	}
	out.Events = inv.Timeline(now)
	return out
}

// ListInvites returns the invites f selects, newest first.
func (c *Console) ListInvites(_ context.Context, f ConsoleFilter) ([]View, error) {
	base := Filter{Sender: f.Sender, Homeserver: f.Homeserver, Address: f.Address, Since: f.Since, Until: f.Until, Limit: f.Limit, Offset: f.Offset}
	if strings.HasPrefix(f.Room, "#") {
		base.RoomAlias = f.Room
	} else {
		base.RoomID = f.Room
	}
	now := c.s.Now()
	list, err := c.s.ListDisplayed(base, f.State, now, c.failedDeliveries)
	if err != nil {
		return nil, err
	}
	out := make([]View, 0, len(list))
	for _, inv := range list {
		out = append(out, c.s.View(inv, now))
	}
	return out, nil
}

// GetInvite returns one invite with its timeline, including which upstream
// identity server vouched for the invitee (VouchEvents).
func (c *Console) GetInvite(_ context.Context, id string) (View, error) {
	n, err := parseConsoleID(id, ErrNotFound)
	if err != nil {
		return View{}, err
	}
	inv, err := c.s.Get(n)
	if err != nil {
		return View{}, err
	}
	out := c.s.View(inv, c.s.Now())
	out.Events = c.s.VouchEvents(inv.ID, out.Events)
	return out, nil
}

// VouchEvents adds to an invite's timeline its upstream vouch: when the
// upstream answered, and what the resolution a moment later did. An invite
// the vouch resolved was not bound here: its "bound" entry says so.
func (s *Service) VouchEvents(id uint64, events []Event) []Event {
	v, err := s.VouchFor(id)
	if err != nil || v == nil {
		return events
	}
	if v.Outcome == "resolved" {
		for i := range events {
			if events[i].Kind == "bound" { // only the vouch resolved it: a bind finds it no longer pending
				events[i].Kind, events[i].Detail = "vouched upstream", "address bound to "+v.MXID+" at "+v.Upstream
			}
		}
	}
	events = append(events, Event{At: v.At, Kind: "vouched", Detail: "upstream identity server " + v.Upstream + " vouched for " + v.MXID, OK: true})
	if !v.Resolved.IsZero() {
		events = append(events, Event{At: v.Resolved, Kind: "upstream resolution", Detail: v.Outcome, OK: v.Outcome == "resolved"})
	}
	return events
}

// CountInvites counts invites by displayed state (DisplayCounts).
func (c *Console) CountInvites(context.Context) (map[string]int, error) {
	return c.s.DisplayCounts(c.s.Now(), c.failedDeliveries)
}

// InvitesPerDay counts invites created and resolved on each of the last days
// days (UTC), oldest first, today last.
func (c *Console) InvitesPerDay(_ context.Context, days int) ([]DayCount, error) {
	return c.s.PerDay(c.s.Now(), days)
}

// RevokeInvite revokes a pending invite, by the console.
func (c *Console) RevokeInvite(_ context.Context, id string) error {
	n, err := parseConsoleID(id, ErrNotFound)
	if err != nil {
		return err
	}
	return c.s.Revoke(n, "admin console")
}

// ResendInvite queues the invite's email again.
func (c *Console) ResendInvite(_ context.Context, id string) error {
	n, err := parseConsoleID(id, ErrNotFound)
	if err != nil {
		return err
	}
	_, err = c.s.Resend(n)
	return err
}

// EraseInvites deletes every invite to address with its keys.
func (c *Console) EraseInvites(_ context.Context, address string) (int, error) {
	return c.s.EraseAddress(address)
}

// View is d as the console shows it: an attempt's reply carries the HTTP
// method and status it got.
func (d Delivery) View() DeliveryView {
	out := DeliveryView{ID: strconv.FormatUint(d.ID, 10), Homeserver: d.Server, MXID: d.MXID, Address: d.Address, State: string(d.State), Created: d.Created}
	if d.State == DeliveryPending {
		out.NextAttempt = d.NextAttempt
	}
	for _, id := range d.InviteIDs {
		out.Invites = append(out.Invites, strconv.FormatUint(id, 10))
	}
	for _, at := range d.Attempts {
		reply := at.Reply
		if at.Status != 0 {
			reply = fmt.Sprintf("%s %d %s", at.Method, at.Status, at.Reply)
		} else if at.Method != "" {
			reply = at.Method + ": " + at.Reply
		}
		out.Attempts = append(out.Attempts, queue.AttemptView{At: at.At, Reply: strings.TrimSpace(reply), OK: at.OK, Temporary: at.Retryable})
	}
	return out
}

func deliveryViews(l []Delivery) []DeliveryView {
	var out []DeliveryView
	for _, d := range l {
		out = append(out, d.View())
	}
	return out
}

// ListDeliveries lists deliveries newest first; the state "sent" is an
// older name for delivered.
func (c *Console) ListDeliveries(_ context.Context, f queue.ViewFilter) ([]DeliveryView, error) {
	state := DeliveryState(f.State)
	if f.State == "sent" {
		state = DeliveryDelivered
	}
	l, _, err := c.dels.List(DeliveryFilter{State: state, Limit: f.Limit, Offset: f.Offset})
	return deliveryViews(l), err
}

// GetDelivery returns one delivery.
func (c *Console) GetDelivery(_ context.Context, id string) (DeliveryView, error) {
	n, err := parseConsoleID(id, ErrNoDelivery)
	if err != nil {
		return DeliveryView{}, err
	}
	d, err := c.dels.Get(n)
	if err != nil {
		return DeliveryView{}, err
	}
	return d.View(), nil
}

// DeliveriesForInvite returns the deliveries carrying the invite (none for
// an invalid id).
func (c *Console) DeliveriesForInvite(_ context.Context, inviteID string) ([]DeliveryView, error) {
	n, err := parseConsoleID(inviteID, ErrNotFound)
	if err != nil {
		return nil, nil
	}
	l, err := c.dels.ByInvite(n)
	return deliveryViews(l), err
}

// RetryDelivery attempts a delivery again.
func (c *Console) RetryDelivery(_ context.Context, id string) error {
	n, err := parseConsoleID(id, ErrNoDelivery)
	if err != nil {
		return err
	}
	return c.dels.Retry(n)
}

// DropDelivery cancels a delivery.
func (c *Console) DropDelivery(_ context.Context, id string) error {
	n, err := parseConsoleID(id, ErrNoDelivery)
	if err != nil {
		return err
	}
	return c.dels.Drop(n)
}

// DeliveryStats summarises the delivery queue with the attempts that failed
// in the last 24 hours.
func (c *Console) DeliveryStats(context.Context) (queue.StatsView, error) {
	s, err := c.dels.Stats()
	if err != nil {
		return queue.StatsView{}, err
	}
	// The failed attempts come from the queue's index of failures, not
	// from reading every delivery.
	return queue.StatsView{Pending: s.Pending, Done: s.Delivered, Failed: s.Failed, FailedAttempts24h: s.FailedAttempts}, nil
}

// DeleteDeliveriesTo deletes the deliveries to address.
func (c *Console) DeleteDeliveriesTo(_ context.Context, address string) (int, error) {
	return c.dels.EraseAddress(address)
}
