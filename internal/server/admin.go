package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/store"
	bolt "go.etcd.io/bbolt"
)

// The admin console's wiring: adapters from the real services to the small
// interfaces package admin consumes, and its optional separate listener.

// newAdmin builds the console (nil when admin.enabled is false).
func (a *App) newAdmin() (*admin.Handler, error) {
	if !a.cfg.Admin.Enabled {
		return nil, nil
	}
	opts := admin.Options{
		DB: a.db, Config: a.cfg, Log: a.log, Now: a.now, IPExtractor: a.clientIP,
		Invites:        &adminInvites{s: a.invites, dels: a.onbind, now: a.now},
		Outbox:         &adminOutbox{q: a.mail},
		Deliveries:     &adminDeliveries{d: a.onbind, now: a.now},
		Bindings:       &adminBindings{id: a.identity},
		Keys:           a.ring,
		NormalizeEmail: identity.NormalizeEmail,
		Scrub: func(context.Context) error {
			_, err := store.Scrub(a.db, 5*time.Second)
			return err
		},
	}
	if a.mailbox != nil {
		opts.Mailbox = &adminMailbox{m: a.mailbox}
	}
	if a.upstream != nil {
		opts.Upstreams = a.adminUpstreams
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

func parseID(id string) (uint64, error) {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("id %q: %w", id, admin.ErrNotFound)
	}
	return n, nil
}

// adminErr maps the services' errors onto the console's.
func adminErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, invites.ErrNotFound), errors.Is(err, invites.ErrNoDelivery), errors.Is(err, mailer.ErrNotFound), errors.Is(err, mailer.ErrNoSuchFile):
		return fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	case errors.Is(err, invites.ErrState), errors.Is(err, invites.ErrDeliveryState), errors.Is(err, mailer.ErrState):
		return fmt.Errorf("%w: %v", admin.ErrNotPossible, err)
	}
	return err
}

// adminInvites adapts invites.Service. The displayed states ("emailed",
// "failed", an unswept expiry) and the timeline are the invites package's
// (invites/console.go).
type adminInvites struct {
	s    *invites.Service
	dels *invites.Deliveries
	now  func() time.Time
}

func (ai *adminInvites) state(inv *invites.Invite) string { return ai.s.DisplayState(inv, ai.now()) }

// failedDeliveries yields the invites of failed deliveries (none without the queue).
func (ai *adminInvites) failedDeliveries(yield func(uint64) bool) {
	if ai.dels != nil {
		ai.dels.FailedDeliveryInvites(yield)
	}
}

func (ai *adminInvites) convert(inv *invites.Invite) admin.Invite {
	id := strconv.FormatUint(inv.ID, 10)
	out := admin.Invite{
		ID: id, Address: inv.Address, State: ai.state(inv), RoomID: inv.RoomID, RoomAlias: inv.RoomAlias, RoomName: inv.RoomName,
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
	for _, e := range inv.Timeline(ai.now()) {
		out.Events = append(out.Events, admin.Event{At: e.At, Kind: e.Kind, Detail: e.Detail, OK: e.OK})
	}
	return out
}

func (ai *adminInvites) ListInvites(_ context.Context, f admin.InviteFilter) ([]admin.Invite, error) {
	base := invites.Filter{Sender: f.Sender, Homeserver: f.Homeserver, Address: f.Address, Since: f.Since, Until: f.Until, Limit: f.Limit, Offset: f.Offset}
	if strings.HasPrefix(f.Room, "#") {
		base.RoomAlias = f.Room
	} else {
		base.RoomID = f.Room
	}
	list, err := ai.s.ListDisplayed(base, f.State, ai.now(), ai.failedDeliveries)
	if err != nil {
		return nil, err
	}
	out := make([]admin.Invite, 0, len(list))
	for _, inv := range list {
		out = append(out, ai.convert(inv))
	}
	return out, nil
}

func (ai *adminInvites) GetInvite(_ context.Context, id string) (admin.Invite, error) {
	n, err := parseID(id)
	if err != nil {
		return admin.Invite{}, err
	}
	inv, err := ai.s.Get(n)
	if err != nil {
		return admin.Invite{}, adminErr(err)
	}
	out := ai.convert(inv)
	// Which upstream identity server vouched for the invitee, and when
	// (lookup.upstream; upstream.go).
	out.Events = upstreamEvents(ai.s, inv.ID, out.Events)
	return out, nil
}

func (ai *adminInvites) CountInvites(context.Context) (map[string]int, error) {
	return ai.s.DisplayCounts(ai.now(), ai.failedDeliveries)
}

func (ai *adminInvites) InvitesPerDay(_ context.Context, days int) ([]admin.DayCount, error) {
	l, err := ai.s.PerDay(ai.now(), days)
	out := make([]admin.DayCount, len(l))
	for i, d := range l {
		out[i] = admin.DayCount{Day: d.Day, Created: d.Created, Resolved: d.Resolved}
	}
	return out, err
}

func (ai *adminInvites) RevokeInvite(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	return adminErr(ai.s.Revoke(n, "admin console"))
}

func (ai *adminInvites) ResendInvite(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	_, err = ai.s.Resend(n)
	return adminErr(err)
}

func (ai *adminInvites) EraseInvites(_ context.Context, address string) (int, error) {
	return ai.s.EraseAddress(address)
}

// adminOutbox adapts mailer.Queue.
type adminOutbox struct{ q *mailer.Queue }

func convertMail(m mailer.Mail) admin.Mail {
	out := admin.Mail{ID: strconv.FormatUint(m.ID, 10), To: m.To, Subject: m.Subject, Kind: m.Kind, Ref: m.Ref, State: string(m.State), Created: m.Created}
	if m.State == mailer.Pending {
		out.NextAttempt = m.NextAttempt
	}
	for _, at := range m.Attempts {
		out.Attempts = append(out.Attempts, admin.Attempt{At: at.At, Reply: at.Reply, OK: at.OK, Temporary: at.Temporary})
	}
	return out
}

func (o *adminOutbox) ListMail(_ context.Context, f admin.QueueFilter) ([]admin.Mail, error) {
	l, err := o.q.List(mailer.Filter{State: mailer.State(f.State), Limit: f.Limit, Offset: f.Offset})
	var out []admin.Mail
	for _, m := range l {
		out = append(out, convertMail(m))
	}
	return out, err
}

func (o *adminOutbox) GetMail(_ context.Context, id string) (admin.Mail, error) {
	n, err := parseID(id)
	if err != nil {
		return admin.Mail{}, err
	}
	m, err := o.q.Get(n)
	return convertMail(m), adminErr(err)
}

func (o *adminOutbox) MailByRef(_ context.Context, ref string) ([]admin.Mail, error) {
	l, err := o.q.ByRef(ref)
	var out []admin.Mail
	for i := len(l) - 1; i >= 0; i-- { // oldest first
		out = append(out, convertMail(l[i]))
	}
	return out, err
}

func (o *adminOutbox) RetryMail(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	return adminErr(o.q.Retry(n))
}

func (o *adminOutbox) DropMail(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	if _, err := o.q.Get(n); err != nil {
		return adminErr(err)
	}
	return adminErr(o.q.Drop(n))
}

func (o *adminOutbox) MailStats(context.Context) (admin.QueueStats, error) {
	s, err := o.q.Stats()
	return admin.QueueStats{Pending: s.Pending, Done: s.Sent, Failed: s.Failed, FailedAttempts24h: s.FailedAttempts}, err
}

func (o *adminOutbox) DeleteMailTo(_ context.Context, address string) (int, error) {
	return o.q.DeleteByRecipient(address)
}

// adminDeliveries adapts the onbind delivery queue.
type adminDeliveries struct {
	d   *invites.Deliveries
	now func() time.Time
}

func convertDelivery(d invites.Delivery) admin.Delivery {
	out := admin.Delivery{ID: strconv.FormatUint(d.ID, 10), Homeserver: d.Server, MXID: d.MXID, Address: d.Address, State: string(d.State), Created: d.Created}
	if d.State == invites.DeliveryPending {
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
		out.Attempts = append(out.Attempts, admin.Attempt{At: at.At, Reply: strings.TrimSpace(reply), OK: at.OK, Temporary: at.Retryable})
	}
	return out
}

func (ad *adminDeliveries) ListDeliveries(_ context.Context, f admin.QueueFilter) ([]admin.Delivery, error) {
	state := invites.DeliveryState(f.State)
	if f.State == admin.QueueDone {
		state = invites.DeliveryDelivered
	}
	l, _, err := ad.d.List(invites.DeliveryFilter{State: state, Limit: f.Limit, Offset: f.Offset})
	var out []admin.Delivery
	for _, d := range l {
		out = append(out, convertDelivery(d))
	}
	return out, err
}

func (ad *adminDeliveries) GetDelivery(_ context.Context, id string) (admin.Delivery, error) {
	n, err := parseID(id)
	if err != nil {
		return admin.Delivery{}, err
	}
	d, err := ad.d.Get(n)
	if err != nil {
		return admin.Delivery{}, adminErr(err)
	}
	return convertDelivery(*d), nil
}

func (ad *adminDeliveries) DeliveriesForInvite(_ context.Context, inviteID string) ([]admin.Delivery, error) {
	n, err := parseID(inviteID)
	if err != nil {
		return nil, nil
	}
	l, err := ad.d.ByInvite(n)
	var out []admin.Delivery
	for _, d := range l {
		out = append(out, convertDelivery(d))
	}
	return out, err
}

func (ad *adminDeliveries) RetryDelivery(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	return adminErr(ad.d.Retry(n))
}

func (ad *adminDeliveries) DropDelivery(_ context.Context, id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	return adminErr(ad.d.Drop(n))
}

func (ad *adminDeliveries) DeliveryStats(context.Context) (admin.QueueStats, error) {
	s, err := ad.d.Stats()
	if err != nil {
		return admin.QueueStats{}, err
	}
	out := admin.QueueStats{Pending: s.Pending, Done: s.Delivered, Failed: s.Failed}
	// Failed attempts in the last 24 hours: only deliveries created in the
	// give-up window can have any.
	since := ad.now().Add(-24 * time.Hour)
	all, _, err := ad.d.List(invites.DeliveryFilter{Limit: math.MaxInt})
	for _, d := range all {
		for _, at := range d.Attempts {
			if !at.OK && at.At.After(since) {
				out.FailedAttempts24h++
			}
		}
	}
	return out, err
}

func (ad *adminDeliveries) DeleteDeliveriesTo(_ context.Context, address string) (int, error) {
	return ad.d.EraseAddress(address)
}

// adminBindings adapts identity's bindings.
type adminBindings struct{ id *identity.Service }

func (ab *adminBindings) BindingFor(_ context.Context, address string) (*admin.Binding, error) {
	b, err := ab.id.BindingFor("email", address)
	if err != nil || b == nil {
		return nil, err
	}
	return &admin.Binding{Address: b.Address, MXID: b.MXID, Bound: b.TS}, nil
}

func (ab *adminBindings) Unbind(_ context.Context, address string) error {
	return ab.id.DB().Update(func(tx *bolt.Tx) error {
		b, err := ab.id.BindingTx(tx, "email", address)
		if err != nil {
			return err
		}
		if b == nil {
			return fmt.Errorf("%w: the address is not bound", admin.ErrNotPossible)
		}
		return ab.id.DeleteBinding(tx, "email", address)
	})
}

func (ab *adminBindings) EraseSessions(_ context.Context, address string) (int, error) {
	return ab.id.EraseSessions(address)
}

// adminMailbox adapts the dev mailbox.
type adminMailbox struct{ m *mailer.DevMailbox }

func (am *adminMailbox) ListDevMail(context.Context) ([]admin.DevMail, error) {
	l, err := am.m.List()
	var out []admin.DevMail
	for _, d := range l {
		out = append(out, admin.DevMail{ID: d.Name, To: d.To, Subject: d.Subject, Date: d.Date})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Date.After(out[j].Date) })
	return out, err
}

func (am *adminMailbox) DeleteDevMailTo(_ context.Context, address string) (int, error) {
	return am.m.DeleteTo(address)
}

func (am *adminMailbox) ReadDevMail(_ context.Context, id string) (admin.DevMail, error) {
	raw, err := am.m.Read(id)
	if err != nil {
		return admin.DevMail{}, adminErr(err)
	}
	p, err := mailer.Parse(raw)
	if err != nil {
		return admin.DevMail{ID: id, Text: string(raw)}, nil
	}
	out := admin.DevMail{ID: id, To: p.Header.Get("To"), Subject: p.Subject, Text: p.Text, HTML: p.HTML}
	if d, err := p.Header.Date(); err == nil {
		out.Date = d
	}
	return out, nil
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
