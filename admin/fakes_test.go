package admin_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
)

// In-memory stand-ins for the services the console shows.

type fakeInvites struct {
	mu      sync.Mutex
	invites map[string]*invites.View
	now     func() time.Time
	outbox  *fakeOutbox
	calls   []string
}

func (f *fakeInvites) sorted() []*invites.View {
	var l []*invites.View
	for _, i := range f.invites {
		l = append(l, i)
	}
	sort.Slice(l, func(a, b int) bool { return l[a].Created.After(l[b].Created) })
	return l
}

func (f *fakeInvites) ListInvites(_ context.Context, flt invites.ConsoleFilter) ([]invites.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []invites.View
	skip := flt.Offset
	for _, i := range f.sorted() {
		if (flt.State != "" && i.State != flt.State) || (flt.Address != "" && i.Address != flt.Address) ||
			(flt.Room != "" && i.RoomID != flt.Room && i.RoomAlias != flt.Room) || (flt.Sender != "" && i.Sender != flt.Sender) ||
			(flt.Homeserver != "" && i.Homeserver != flt.Homeserver) ||
			(!flt.Since.IsZero() && i.Created.Before(flt.Since)) || (!flt.Until.IsZero() && !i.Created.Before(flt.Until)) {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		out = append(out, *i)
		if flt.Limit > 0 && len(out) >= flt.Limit {
			break
		}
	}
	return out, nil
}

func (f *fakeInvites) GetInvite(_ context.Context, id string) (invites.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.invites[id]
	if !ok {
		return invites.View{}, fmt.Errorf("invite %s: %w", id, admin.ErrNotFound)
	}
	return *i, nil
}

func (f *fakeInvites) CountInvites(context.Context) (map[string]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]int{}
	for _, i := range f.invites {
		m[i.State]++
	}
	return m, nil
}

func (f *fakeInvites) InvitesPerDay(_ context.Context, days int) ([]invites.DayCount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	today := f.now().UTC().Truncate(24 * time.Hour)
	out := make([]invites.DayCount, days)
	for d := range out {
		out[d].Day = today.AddDate(0, 0, d-days+1)
	}
	for _, i := range f.invites {
		if n := days - 1 - int(today.Sub(i.Created.UTC().Truncate(24*time.Hour))/(24*time.Hour)); n >= 0 && n < days {
			out[n].Created++
		}
		for _, e := range i.Events {
			if e.Kind == "resolved" {
				if n := days - 1 - int(today.Sub(e.At.UTC().Truncate(24*time.Hour))/(24*time.Hour)); n >= 0 && n < days {
					out[n].Resolved++
				}
			}
		}
	}
	return out, nil
}

func (f *fakeInvites) RevokeInvite(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.invites[id]
	if !ok {
		return admin.ErrNotFound
	}
	if i.State != invites.StatePending && i.State != invites.StateEmailed && i.State != invites.StateFailed {
		return fmt.Errorf("%w: the invite is %s", admin.ErrNotPossible, i.State)
	}
	i.State = invites.StateRevoked
	i.Events = append(i.Events, invites.Event{At: f.now(), Kind: "revoked", OK: true})
	f.calls = append(f.calls, "revoke "+id)
	return nil
}

func (f *fakeInvites) ResendInvite(_ context.Context, id string) error {
	f.mu.Lock()
	i, ok := f.invites[id]
	if !ok {
		f.mu.Unlock()
		return admin.ErrNotFound
	}
	if i.State != invites.StatePending && i.State != invites.StateEmailed && i.State != invites.StateFailed {
		f.mu.Unlock()
		return fmt.Errorf("%w: the invite is %s", admin.ErrNotPossible, i.State)
	}
	f.calls = append(f.calls, "resend "+id)
	to, ref := i.Address, i.MailRef
	f.mu.Unlock()
	if f.outbox != nil {
		f.outbox.add(mailer.View{To: to, Subject: "You have been invited (again)", Kind: "invite", Ref: ref, State: "pending", Created: f.now()})
	}
	return nil
}

func (f *fakeInvites) EraseInvites(_ context.Context, address string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for id, i := range f.invites {
		if i.Address == address {
			delete(f.invites, id)
			n++
		}
	}
	return n, nil
}

type fakeOutbox struct {
	mu    sync.Mutex
	seq   int
	mails map[string]*mailer.View
	now   func() time.Time
}

func (f *fakeOutbox) add(m mailer.View) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	m.ID = fmt.Sprint(f.seq)
	if f.mails == nil {
		f.mails = map[string]*mailer.View{}
	}
	f.mails[m.ID] = &m
	return m.ID
}

func (f *fakeOutbox) sorted() []*mailer.View {
	var l []*mailer.View
	for _, m := range f.mails {
		l = append(l, m)
	}
	sort.Slice(l, func(a, b int) bool { return l[a].Created.After(l[b].Created) })
	return l
}

func (f *fakeOutbox) ListMail(_ context.Context, flt queue.ViewFilter) ([]mailer.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mailer.View
	skip := flt.Offset
	for _, m := range f.sorted() {
		if flt.State != "" && m.State != flt.State {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		out = append(out, *m)
		if flt.Limit > 0 && len(out) >= flt.Limit {
			break
		}
	}
	return out, nil
}

func (f *fakeOutbox) GetMail(_ context.Context, id string) (mailer.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.mails[id]
	if !ok {
		return mailer.View{}, admin.ErrNotFound
	}
	return *m, nil
}

func (f *fakeOutbox) MailByRef(_ context.Context, ref string) ([]mailer.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mailer.View
	for _, m := range f.sorted() {
		if m.Ref == ref {
			out = append(out, *m)
		}
	}
	return out, nil
}

func (f *fakeOutbox) RetryMail(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.mails[id]
	if !ok {
		return admin.ErrNotFound
	}
	if m.State == string(mailer.Sent) {
		return fmt.Errorf("%w: already sent", admin.ErrNotPossible)
	}
	m.State, m.NextAttempt = "pending", f.now()
	return nil
}

func (f *fakeOutbox) DropMail(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mails[id]; !ok {
		return admin.ErrNotFound
	}
	delete(f.mails, id)
	return nil
}

func (f *fakeOutbox) MailStats(context.Context) (queue.StatsView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s queue.StatsView
	for _, m := range f.mails {
		switch m.State {
		case "pending":
			s.Pending++
		case string(mailer.Sent):
			s.Done++
		case "failed":
			s.Failed++
		}
		for _, a := range m.Attempts {
			if !a.OK && f.now().Sub(a.At) < 24*time.Hour {
				s.FailedAttempts24h++
			}
		}
	}
	return s, nil
}

func (f *fakeOutbox) DeleteMailTo(_ context.Context, address string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for id, m := range f.mails {
		if strings.EqualFold(m.To, address) {
			delete(f.mails, id)
			n++
		}
	}
	return n, nil
}

type fakeDeliveries struct {
	mu   sync.Mutex
	dels map[string]*invites.DeliveryView
	now  func() time.Time
}

func (f *fakeDeliveries) ListDeliveries(_ context.Context, flt queue.ViewFilter) ([]invites.DeliveryView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []invites.DeliveryView
	for _, d := range f.dels {
		if flt.State == "" || d.State == flt.State {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Created.After(out[b].Created) })
	out = out[min(flt.Offset, len(out)):]
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[:flt.Limit]
	}
	return out, nil
}

func (f *fakeDeliveries) GetDelivery(_ context.Context, id string) (invites.DeliveryView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.dels[id]
	if !ok {
		return invites.DeliveryView{}, admin.ErrNotFound
	}
	return *d, nil
}

func (f *fakeDeliveries) DeliveriesForInvite(_ context.Context, inviteID string) ([]invites.DeliveryView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []invites.DeliveryView
	for _, d := range f.dels {
		for _, i := range d.Invites {
			if i == inviteID {
				out = append(out, *d)
			}
		}
	}
	return out, nil
}

func (f *fakeDeliveries) RetryDelivery(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.dels[id]
	if !ok {
		return admin.ErrNotFound
	}
	if d.State == string(invites.DeliveryDelivered) {
		return fmt.Errorf("%w: already delivered", admin.ErrNotPossible)
	}
	d.State, d.NextAttempt = "pending", f.now()
	return nil
}

func (f *fakeDeliveries) DropDelivery(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.dels[id]; !ok {
		return admin.ErrNotFound
	}
	delete(f.dels, id)
	return nil
}

func (f *fakeDeliveries) DeliveryStats(context.Context) (queue.StatsView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s queue.StatsView
	for _, d := range f.dels {
		switch d.State {
		case "pending":
			s.Pending++
		case string(invites.DeliveryDelivered):
			s.Done++
		case "failed":
			s.Failed++
		}
		for _, a := range d.Attempts {
			if !a.OK && f.now().Sub(a.At) < 24*time.Hour {
				s.FailedAttempts24h++
			}
		}
	}
	return s, nil
}

func (f *fakeDeliveries) DeleteDeliveriesTo(_ context.Context, address string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for id, d := range f.dels {
		if d.Address == address {
			delete(f.dels, id)
			n++
		}
	}
	return n, nil
}

type fakeBindings struct {
	mu sync.Mutex
	m  map[string]identity.BindingView
}

func (f *fakeBindings) BindingFor(_ context.Context, address string) (*identity.BindingView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.m[address]
	if !ok {
		return nil, nil
	}
	return &b, nil
}

func (f *fakeBindings) Unbind(_ context.Context, address string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[address]; !ok {
		return fmt.Errorf("%w: not bound", admin.ErrNotPossible)
	}
	delete(f.m, address)
	return nil
}

type fakeMailbox struct{ mails []mailer.DevMailView }

func (f *fakeMailbox) ListDevMail(context.Context) ([]mailer.DevMailView, error) {
	return append([]mailer.DevMailView(nil), f.mails...), nil
}

func (f *fakeMailbox) ReadDevMail(_ context.Context, id string) (mailer.DevMailView, error) {
	for _, m := range f.mails {
		if m.ID == id {
			return m, nil
		}
	}
	return mailer.DevMailView{}, admin.ErrNotFound
}

// EraseSessions: the fake holds no validation sessions.
func (f *fakeBindings) EraseSessions(context.Context, string) (int, error) { return 0, nil }

func (f *fakeMailbox) DeleteDevMailTo(_ context.Context, address string) (int, error) {
	kept, n := f.mails[:0], 0
	for _, m := range f.mails {
		if strings.EqualFold(m.To, address) {
			n++
			continue
		}
		kept = append(kept, m)
	}
	f.mails = kept
	return n, nil
}
