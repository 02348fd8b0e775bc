package admin

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/queue"
)

// The operations behind both the pages and the JSON API: each loads data or
// performs one action and writes the audit log.

const pageSize = 50

// act runs one state-changing action and audits it, whatever its outcome.
func (h *Handler) act(c echo.Context, action, target string, fn func(ctx context.Context) error) error {
	err := classify(fn(c.Request().Context()))
	detail := ""
	if err != nil {
		detail = err.Error()
	}
	h.audit(who(c), action, target, detail, err == nil)
	return h.fromService(err)
}

type stateCount struct {
	State string `json:"state"`
	N     int    `json:"count"`
}

type dashboardData struct {
	Invites     []stateCount       `json:"invites"`
	Outbox      *queue.StatsView   `json:"outbox,omitempty"`
	Deliveries  *queue.StatsView   `json:"deliveries,omitempty"`
	Failures24h int                `json:"failures_24h"`
	Days        []invites.DayCount `json:"per_day"`
	Problems    []string           `json:"problems,omitempty"`
}

func (h *Handler) loadDashboard(ctx context.Context) dashboardData {
	var d dashboardData
	problem := func(what string, err error) {
		h.opts.Log.Error("admin: dashboard", "what", what, "err", err)
		d.Problems = append(d.Problems, what+": "+err.Error())
	}
	if inv := h.opts.Invites; inv != nil {
		if counts, err := inv.CountInvites(ctx); err != nil {
			problem("invite counts", err)
		} else {
			for _, s := range invites.DisplayStates {
				d.Invites = append(d.Invites, stateCount{s, counts[s]})
			}
		}
		if days, err := inv.InvitesPerDay(ctx, 30); err != nil {
			problem("invites per day", err)
		} else {
			d.Days = days
		}
	}
	if o := h.opts.Outbox; o != nil {
		if s, err := o.MailStats(ctx); err != nil {
			problem("outbox", err)
		} else {
			d.Outbox = &s
			d.Failures24h += s.FailedAttempts24h
		}
	}
	if q := h.opts.Deliveries; q != nil {
		if s, err := q.DeliveryStats(ctx); err != nil {
			problem("deliveries", err)
		} else {
			d.Deliveries = &s
			d.Failures24h += s.FailedAttempts24h
		}
	}
	return d
}

type invitesData struct {
	Filter  invites.ConsoleFilter `json:"filter"`
	Query   string                `json:"-"` // the address as typed
	Since   string                `json:"-"`
	Until   string                `json:"-"`
	Invites []invites.View        `json:"invites"`
	Page    int                   `json:"page"`
	More    bool                  `json:"more"`
	Problem string                `json:"problem,omitempty"`
	States  []string              `json:"-"`
	PrevURL string                `json:"-"`
	NextURL string                `json:"-"`
}

func pageParam(c echo.Context) int {
	p, err := strconv.Atoi(c.QueryParam("page"))
	if err != nil || p < 1 {
		return 1
	}
	return min(p, 100000)
}

func (h *Handler) listInvites(c echo.Context) (invitesData, error) {
	if h.opts.Invites == nil {
		return invitesData{}, errUnavailable("The invite store")
	}
	q := c.QueryParams()
	d := invitesData{States: invites.DisplayStates, Page: pageParam(c), Query: strings.TrimSpace(q.Get("q")), Since: q.Get("since"), Until: q.Get("until")}
	f := invites.ConsoleFilter{Room: strings.TrimSpace(q.Get("room")), Sender: strings.TrimSpace(q.Get("sender")), Homeserver: strings.TrimSpace(q.Get("homeserver"))}
	if s := q.Get("state"); s != "" {
		for _, known := range invites.DisplayStates {
			if s == known {
				f.State = s
			}
		}
		if f.State == "" {
			return d, errStatus(http.StatusBadRequest, "Unknown state %q", s)
		}
	}
	if d.Query != "" {
		a, err := h.opts.NormalizeEmail(d.Query)
		if err != nil {
			return d, errStatus(http.StatusBadRequest, "That is not an email address: %v", err)
		}
		f.Address = a
	}
	for _, p := range []struct {
		in  string
		out *time.Time
		add time.Duration
	}{{d.Since, &f.Since, 0}, {d.Until, &f.Until, 24 * time.Hour}} {
		if p.in == "" {
			continue
		}
		t, err := time.Parse("2006-01-02", p.in)
		if err != nil {
			return d, errStatus(http.StatusBadRequest, "Dates are YYYY-MM-DD (got %q)", p.in)
		}
		*p.out = t.Add(p.add)
	}
	f.Limit, f.Offset = pageSize+1, (d.Page-1)*pageSize
	list, err := h.opts.Invites.ListInvites(c.Request().Context(), f)
	if err != nil {
		return d, h.fromService(err)
	}
	if len(list) > pageSize {
		list, d.More = list[:pageSize], true
	}
	f.Limit = pageSize
	d.Filter, d.Invites = f, list
	if d.Page > 1 {
		d.PrevURL = withPage(c, d.Page-1)
	}
	if d.More {
		d.NextURL = withPage(c, d.Page+1)
	}
	return d, nil
}

func withPage(c echo.Context, page int) string {
	q := c.QueryParams()
	v := make(map[string][]string, len(q))
	for k, vals := range q {
		v[k] = vals
	}
	v["page"] = []string{strconv.Itoa(page)}
	u := *c.Request().URL
	u.RawQuery = encodeQuery(v)
	return u.RequestURI()
}

type inviteData struct {
	Invite     invites.View           `json:"invite"`
	Timeline   []invites.Event        `json:"timeline"`
	Mails      []mailer.View          `json:"mails"`
	Deliveries []invites.DeliveryView `json:"deliveries"`
	Problems   []string               `json:"problems,omitempty"`
	CanRevoke  bool                   `json:"-"`
	CanResend  bool                   `json:"-"`
}

func (h *Handler) loadInvite(ctx context.Context, id string) (inviteData, error) {
	var d inviteData
	if h.opts.Invites == nil {
		return d, errUnavailable("The invite store")
	}
	inv, err := h.opts.Invites.GetInvite(ctx, id)
	if err != nil {
		return d, h.fromService(err)
	}
	d.Invite = inv
	d.Timeline = append(d.Timeline, inv.Events...)
	if h.opts.Outbox != nil && inv.MailRef != "" {
		mails, err := h.opts.Outbox.MailByRef(ctx, inv.MailRef)
		if err != nil {
			d.Problems = append(d.Problems, "emails: "+err.Error())
		}
		d.Mails = mails
		for _, m := range mails {
			d.Timeline = append(d.Timeline, invites.Event{At: m.Created, Kind: "email queued", Detail: m.Subject, OK: true, Link: Prefix + "/outbox/" + m.ID})
			for _, a := range m.Attempts {
				d.Timeline = append(d.Timeline, invites.Event{At: a.At, Kind: "email attempt", Detail: a.Reply, OK: a.OK, Link: Prefix + "/outbox/" + m.ID})
			}
		}
	}
	if h.opts.Deliveries != nil {
		dels, err := h.opts.Deliveries.DeliveriesForInvite(ctx, id)
		if err != nil {
			d.Problems = append(d.Problems, "deliveries: "+err.Error())
		}
		d.Deliveries = dels
		for _, dl := range dels {
			d.Timeline = append(d.Timeline, invites.Event{At: dl.Created, Kind: "delivery queued", Detail: "to " + dl.Homeserver + " for " + dl.MXID, OK: true, Link: Prefix + "/deliveries/" + dl.ID})
			for _, a := range dl.Attempts {
				d.Timeline = append(d.Timeline, invites.Event{At: a.At, Kind: "delivery attempt", Detail: dl.Homeserver + ": " + a.Reply, OK: a.OK, Link: Prefix + "/deliveries/" + dl.ID})
			}
		}
	}
	sort.SliceStable(d.Timeline, func(i, j int) bool { return d.Timeline[i].At.Before(d.Timeline[j].At) })
	open := inv.State == invites.StatePending || inv.State == invites.StateEmailed || inv.State == invites.StateFailed
	d.CanRevoke, d.CanResend = open, open
	return d, nil
}

func (h *Handler) revokeInvite(c echo.Context, id string) error {
	if h.opts.Invites == nil {
		return errUnavailable("The invite store")
	}
	return h.act(c, "invite.revoke", "invite "+id, func(ctx context.Context) error { return h.opts.Invites.RevokeInvite(ctx, id) })
}

func (h *Handler) resendInvite(c echo.Context, id string) error {
	if h.opts.Invites == nil {
		return errUnavailable("The invite store")
	}
	return h.act(c, "invite.resend", "invite "+id, func(ctx context.Context) error { return h.opts.Invites.ResendInvite(ctx, id) })
}

// consoleQueue is the outbox or the delivery queue seen the same way.
type consoleQueue struct {
	name, noun string   // "outbox", "mail"
	states     []string // the state filters it accepts ("" too)
	list       func(ctx context.Context, f queue.ViewFilter) (any, int, error)
	retry      func(ctx context.Context, id string) error
	drop       func(ctx context.Context, id string) error
}

func (h *Handler) mailQueue() (*consoleQueue, error) {
	o := h.opts.Outbox
	if o == nil {
		return nil, errUnavailable("The outbox")
	}
	return &consoleQueue{name: "outbox", noun: "mail", states: mailer.ViewStates,
		list: func(ctx context.Context, f queue.ViewFilter) (any, int, error) {
			l, err := o.ListMail(ctx, f)
			return l, len(l), err
		},
		retry: o.RetryMail, drop: o.DropMail}, nil
}

func (h *Handler) deliveryQueue() (*consoleQueue, error) {
	q := h.opts.Deliveries
	if q == nil {
		return nil, errUnavailable("The delivery queue")
	}
	return &consoleQueue{name: "deliveries", noun: "delivery", states: slices.Concat(invites.DeliveryViewStates, []string{string(mailer.Sent)}), // "sent": an older name for delivered
		list: func(ctx context.Context, f queue.ViewFilter) (any, int, error) {
			l, err := q.ListDeliveries(ctx, f)
			return l, len(l), err
		},
		retry: q.RetryDelivery, drop: q.DropDelivery}, nil
}

func (h *Handler) queueAction(c echo.Context, q *consoleQueue, action, id string) error {
	fn := q.retry
	if action == "drop" {
		fn = q.drop
	} else if action != "retry" {
		return errStatus(http.StatusBadRequest, "Unknown action %q (want retry or drop)", action)
	}
	return h.act(c, q.noun+"."+action, q.noun+" "+id, func(ctx context.Context) error { return fn(ctx, id) })
}

// bulk applies action to every id; it reports how many succeeded and the
// first error.
func (h *Handler) bulk(c echo.Context, q *consoleQueue, action string, ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, errStatus(http.StatusBadRequest, "Select at least one entry")
	}
	if len(ids) > 1000 {
		return 0, errStatus(http.StatusBadRequest, "At most 1000 entries at once")
	}
	n := 0
	var first error
	for _, id := range ids {
		if err := h.queueAction(c, q, action, id); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		n++
	}
	return n, first
}

type queueData struct {
	State   string           `json:"state,omitempty"`
	Items   any              `json:"items"`
	Page    int              `json:"page"`
	More    bool             `json:"more"`
	PrevURL string           `json:"-"`
	NextURL string           `json:"-"`
	Stats   *queue.StatsView `json:"stats,omitempty"`
}

func (h *Handler) listQueue(c echo.Context, q *consoleQueue) (queueData, error) {
	d := queueData{State: c.QueryParam("state"), Page: pageParam(c)}
	if d.State != "" && !slices.Contains(q.states, d.State) {
		return d, errStatus(http.StatusBadRequest, "Unknown state %q for the %s: use one of %s", d.State, q.name, strings.Join(q.states, ", "))
	}
	items, n, err := q.list(c.Request().Context(), queue.ViewFilter{State: d.State, Limit: pageSize + 1, Offset: (d.Page - 1) * pageSize})
	if err != nil {
		return d, h.fromService(err)
	}
	if n > pageSize {
		d.More = true
		switch l := items.(type) {
		case []mailer.View:
			items = l[:pageSize]
		case []invites.DeliveryView:
			items = l[:pageSize]
		}
	}
	d.Items = items
	if d.Page > 1 {
		d.PrevURL = withPage(c, d.Page-1)
	}
	if d.More {
		d.NextURL = withPage(c, d.Page+1)
	}
	return d, nil
}

type bindingData struct {
	Query      string                `json:"-"`
	Address    string                `json:"address"`
	Binding    *identity.BindingView `json:"binding"`
	Invites    []invites.View        `json:"invites"`
	Problem    string                `json:"-"`
	Searched   bool                  `json:"-"`
	Erasable   bool                  `json:"-"`
	Bindings   bool                  `json:"-"`
	MoreInvite bool                  `json:"-"`
}

func (h *Handler) lookupAddress(ctx context.Context, raw string) (bindingData, error) {
	d := bindingData{Query: strings.TrimSpace(raw), Bindings: h.opts.Bindings != nil}
	if d.Query == "" {
		return d, nil
	}
	d.Searched = true
	a, err := h.opts.NormalizeEmail(d.Query)
	if err != nil {
		return d, errStatus(http.StatusBadRequest, "That is not an email address: %v", err)
	}
	d.Address = a
	if h.opts.Bindings != nil {
		if d.Binding, err = h.opts.Bindings.BindingFor(ctx, a); err != nil {
			return d, h.fromService(err)
		}
	}
	if h.opts.Invites != nil {
		if d.Invites, err = h.opts.Invites.ListInvites(ctx, invites.ConsoleFilter{Address: a, Limit: 101}); err != nil {
			return d, h.fromService(err)
		}
		if len(d.Invites) > 100 {
			d.Invites, d.MoreInvite = d.Invites[:100], true
		}
	}
	d.Erasable = true
	return d, nil
}

func (h *Handler) unbind(c echo.Context, raw string) error {
	if h.opts.Bindings == nil {
		return errUnavailable("The binding store")
	}
	a, err := h.opts.NormalizeEmail(raw)
	if err != nil || a == "" {
		return errStatus(http.StatusBadRequest, "That is not an email address")
	}
	return h.act(c, "binding.unbind", matrix.RedactEmail(a), func(ctx context.Context) error { return h.opts.Bindings.Unbind(ctx, a) })
}

// EraseResult says what an erasure removed.
type EraseResult struct {
	Binding    bool `json:"binding"`
	Invites    int  `json:"invites"`
	Mails      int  `json:"mails"`
	Deliveries int  `json:"deliveries"`
	Sessions   int  `json:"sessions"`  // email validation sessions
	DevMails   int  `json:"dev_mails"` // files in the dev mailbox
	Scrubbed   bool `json:"scrubbed"`  // freed storage overwritten
}

// erase removes everything Herald holds about an address. confirm must repeat it.
func (h *Handler) erase(c echo.Context, raw, confirm string) (EraseResult, error) {
	var res EraseResult
	a, err := h.opts.NormalizeEmail(raw)
	if err != nil || a == "" {
		return res, errStatus(http.StatusBadRequest, "That is not an email address")
	}
	if b, err := h.opts.NormalizeEmail(confirm); err != nil || b != a {
		return res, errStatus(http.StatusBadRequest, "Type the address again to confirm the erasure")
	}
	err = h.act(c, "address.erase", matrix.RedactEmail(a), func(ctx context.Context) error {
		// Invites first, so none can queue another mail; the dev mailbox
		// last, after the outbox stopped writing to it; then the storage.
		var errs []error
		if h.opts.Invites != nil {
			n, err := h.opts.Invites.EraseInvites(ctx, a)
			res.Invites = n
			errs = append(errs, err)
		}
		if h.opts.Bindings != nil {
			b, err := h.opts.Bindings.BindingFor(ctx, a)
			if err == nil && b != nil {
				err = h.opts.Bindings.Unbind(ctx, a)
				res.Binding = err == nil
			}
			errs = append(errs, err)
			n, err := h.opts.Bindings.EraseSessions(ctx, a)
			res.Sessions = n
			errs = append(errs, err)
		}
		if h.opts.Outbox != nil {
			n, err := h.opts.Outbox.DeleteMailTo(ctx, a)
			res.Mails = n
			errs = append(errs, err)
		}
		if h.opts.Deliveries != nil {
			n, err := h.opts.Deliveries.DeleteDeliveriesTo(ctx, a)
			res.Deliveries = n
			errs = append(errs, err)
		}
		if h.opts.Mailbox != nil {
			n, err := h.opts.Mailbox.DeleteDevMailTo(ctx, a)
			res.DevMails = n
			errs = append(errs, err)
		}
		if h.opts.Scrub != nil {
			err := h.opts.Scrub(ctx)
			res.Scrubbed = err == nil
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	return res, err
}

type keyRow struct {
	ID      string    `json:"id"`
	Public  string    `json:"public_key"`
	Created time.Time `json:"created"`
	Retired time.Time `json:"retired,omitzero"`
	Current bool      `json:"current"`
	State   string    `json:"state"`
}

func (h *Handler) keyRows() ([]keyRow, error) {
	if h.opts.Keys == nil {
		return nil, errUnavailable("The key ring")
	}
	var out []keyRow
	for _, k := range h.opts.Keys.List() {
		st := "published"
		switch {
		case k.Current:
			st = "current"
		case !k.Valid():
			st = "retired"
		}
		out = append(out, keyRow{ID: k.ID, Public: k.PublicBase64(), Created: k.Created, Retired: k.Retired, Current: k.Current, State: st})
	}
	return out, nil
}

func (h *Handler) rotateKey(c echo.Context) (keys.Key, error) {
	if h.opts.Keys == nil {
		return keys.Key{}, errUnavailable("The key ring")
	}
	var k keys.Key
	err := h.act(c, "key.rotate", "", func(context.Context) error {
		var err error
		k, err = h.opts.Keys.Rotate()
		return err
	})
	if err == nil {
		// Name the new key in the log line too.
		h.opts.Log.Info("admin: rotated signing key", "key_id", k.ID)
	}
	return k, err
}

func (h *Handler) retireKey(c echo.Context, id string) error {
	if h.opts.Keys == nil {
		return errUnavailable("The key ring")
	}
	if id == "" {
		return errStatus(http.StatusBadRequest, "Which key? (id missing)")
	}
	found := false
	for _, k := range h.opts.Keys.List() {
		if k.ID == id {
			found = true
			if k.Current {
				return errStatus(http.StatusConflict, "%s is the current key: rotate first, then retire it", id)
			}
		}
	}
	if !found {
		return errStatus(http.StatusNotFound, "No key %s", id)
	}
	return h.act(c, "key.retire", id, func(context.Context) error { return h.opts.Keys.Retire(id) })
}
