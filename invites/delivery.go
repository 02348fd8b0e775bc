package invites

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// Onbind deliveries run on the queue package, like the mailer's outbox. A bind
// resolves the address's pending invites and queues one delivery per invitee
// homeserver in the bind's own transaction; the worker POSTs it to
// {homeserver}/_matrix/federation/v1/3pid/onbind after the commit, and
// retries with capped exponential backoff until it is accepted, refused for
// good, or delivery.give_up_after has passed.
//
// The records, their due and state indexes and counters are the queue
// named "onbind" (queue.Bolt on bbolt, pgqueue on PostgreSQL); the
// deliveries keep two indexes of their own, written in the same
// transactions (bbolt buckets, or the PostgreSQL tables of the same names):
//
//	onbind_invite:   invite id + delivery id -> nil
//	onbind_address:  medium 0 address 0 delivery id -> nil
const deliveryQueue = "onbind"

var (
	bktDeliveryInvite  = []byte("onbind_invite")
	bktDeliveryAddress = []byte("onbind_address")
)

// DeliveryState is where a delivery stands.
type DeliveryState string

const (
	DeliveryPending   DeliveryState = "pending"   // waiting for its next attempt
	DeliveryDelivered DeliveryState = "delivered" // the homeserver answered 2xx
	DeliveryFailed    DeliveryState = "failed"    // refused for good, or retried until give_up_after
	DeliveryCancelled DeliveryState = "cancelled" // nothing left to deliver (revoked meanwhile) or dropped by an operator
)

// DeliveryStates lists every state, for dashboards.
var DeliveryStates = []DeliveryState{DeliveryPending, DeliveryDelivered, DeliveryFailed, DeliveryCancelled}

// DeliveryAttempt is one try at delivering.
type DeliveryAttempt struct {
	At        time.Time `json:"at"`
	Method    string    `json:"method,omitempty"` // POST, or PUT after a 404/405 fallback
	Status    int       `json:"status,omitempty"` // 0: no answer (network error)
	Reply     string    `json:"reply"`            // short answer body, or the error
	Invites   int       `json:"invites"`          // how many invites the body carried
	OK        bool      `json:"ok"`
	Retryable bool      `json:"retryable,omitempty"`
}

// Delivery is one onbind notification for one invitee.
type Delivery struct {
	ID          uint64            `json:"id"`
	Server      string            `json:"server"` // the invitee's homeserver
	Medium      string            `json:"medium"`
	Address     string            `json:"address"`
	MXID        string            `json:"mxid"`
	InviteIDs   []uint64          `json:"invite_ids"`
	State       DeliveryState     `json:"state"`
	Created     time.Time         `json:"created"`
	NextAttempt time.Time         `json:"next_attempt"` // meaningful while pending
	RetryFrom   time.Time         `json:"retry_from"`   // the give-up budget starts here
	RetryBase   int               `json:"retry_base,omitempty"`
	Finished    time.Time         `json:"finished,omitzero"`
	LastError   string            `json:"last_error,omitempty"`
	Attempts    []DeliveryAttempt `json:"attempts"`
}

// DeliveryFilter selects deliveries for List. Zero fields match everything.
type DeliveryFilter struct {
	State  DeliveryState
	Server string
	MXID   string
	Limit  int // default 50
	Offset int
}

// DeliveryStats counts deliveries by state, and the attempts that failed
// in the last 24 hours.
type DeliveryStats struct {
	Pending        int `json:"pending"`
	Delivered      int `json:"delivered"`
	Failed         int `json:"failed"`
	Cancelled      int `json:"cancelled"`
	FailedAttempts int `json:"failed_attempts_24h"`
}

// Notifier sends an onbind body to a homeserver (federation.Client).
type Notifier interface {
	OnBind(ctx context.Context, server string, body []byte) (*federation.OnBindResponse, error)
}

// DeliveryOptions configure the queue.
type DeliveryOptions struct {
	Notifier    Notifier
	MinBackoff  time.Duration // default 2 s
	MaxBackoff  time.Duration // default 10 min
	GiveUpAfter time.Duration // default 7 days
	// MaxRetryAfter caps a homeserver's Retry-After. Default 6 h.
	MaxRetryAfter time.Duration
	// Workers is how many deliveries run at once. Default 8.
	Workers int
	Log     *slog.Logger
	// OnAttempt, if set, is told the result of every recorded attempt (after
	// its transaction commits): "delivered", "retry" (tried again later),
	// "refused" (a 4xx: failed for good) or "gave_up" (out of retry time).
	// Metrics count these.
	OnAttempt func(result string)
}

// Deliveries is the durable onbind queue: a queue.Queue whose deliver
// function POSTs the onbind body and classifies the homeserver's answer.
type Deliveries struct {
	s    *Service
	db   *store.DB
	be   queue.Backend
	q    *queue.Queue
	opts DeliveryOptions
	log  *slog.Logger
}

var (
	// ErrNoDelivery: no delivery with that id.
	ErrNoDelivery = errors.New("invites: no such delivery")
	// ErrDeliveryState: the action does not apply in the delivery's state.
	ErrDeliveryState = errors.New("invites: not possible in the delivery's state")
)

// deliveryMeta is what a delivery keeps besides the queue's record.
type deliveryMeta struct {
	Server    string   `json:"server"`
	Medium    string   `json:"medium"`
	Address   string   `json:"address"`
	MXID      string   `json:"mxid"`
	InviteIDs []uint64 `json:"invite_ids"`
}

// attemptDetail is what an attempt keeps besides its reply.
type attemptDetail struct {
	Method  string `json:"method,omitempty"`
	Status  int    `json:"status,omitempty"`
	Invites int    `json:"invites"`
}

// OpenDeliveries creates the queue's buckets and registers the bind hook
// that resolves pending invites on s's identity service. Run starts the worker.
func OpenDeliveries(s *Service, opts DeliveryOptions) (*Deliveries, error) {
	if opts.Notifier == nil {
		return nil, errors.New("invites: DeliveryOptions.Notifier is required")
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 2 * time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(opts.MinBackoff, 10*time.Minute)
	}
	if opts.GiveUpAfter <= 0 {
		opts.GiveUpAfter = 7 * 24 * time.Hour
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Log == nil {
		opts.Log = s.opts.Log
	}
	if err := s.st.open(s.db, partDeliveries); err != nil {
		return nil, err
	}
	var be queue.Backend
	var err error
	if s.db.Backend() == store.BackendPostgres {
		be, err = pgqueue.New(s.db.PG(), deliveryQueue)
	} else {
		var b *queue.Bolt
		if b, err = queue.OpenBolt(s.db.Bolt(), deliveryQueue); err == nil {
			be = b.CommitThrough(s.db.Committer())
		}
	}
	if err != nil {
		return nil, err
	}
	s.dq = be
	d := &Deliveries{s: s, db: s.db, be: be, opts: opts, log: opts.Log.With("component", "onbind")}
	d.q, err = queue.New(be, queue.Options{
		Name:          "onbind",
		Deliver:       d.deliver,
		Workers:       opts.Workers,
		MinBackoff:    opts.MinBackoff,
		MaxBackoff:    opts.MaxBackoff,
		MaxRetryAfter: opts.MaxRetryAfter,
		GiveUpAfter:   opts.GiveUpAfter,
		OnDelete:      d.unindex,
		OnRecord:      d.recorded,
		Now:           func() time.Time { return s.opts.Now().UTC() },
		Log:           opts.Log,
	})
	if err != nil {
		return nil, err
	}
	if err := d.convertLegacy(); err != nil {
		return nil, err
	}
	s.opts.Identity.OnBind(d.resolve)
	return d, nil
}

// resolve is the bind hook: inside the bind's transaction it marks every
// pending, unexpired invite for the address resolved to the new mxid and
// queues one delivery for them to the mxid's homeserver. Invites of an
// address bound earlier were resolved then, so a recycled address receives
// none of them.
//
// It first takes the address's lock (Service.lockAddress): store-invite
// runs at READ COMMITTED on PostgreSQL and holds that lock shared, so an
// invite stored while the address is bound is either seen here and
// resolved, or stored after the bind commits and refused then as bound.
func (d *Deliveries) resolve(tx *store.Tx, b identity.Binding) error {
	if err := d.s.lockAddress(tx, b.Medium, b.Address); err != nil {
		return err
	}
	pending, err := d.s.PendingFor(tx, b.Medium, b.Address)
	if err != nil || len(pending) == 0 {
		return err
	}
	now := d.s.opts.Now().UTC()
	ids := make([]uint64, 0, len(pending))
	for _, inv := range pending {
		inv.State = StateResolved
		inv.ResolvedMXID = b.MXID
		inv.StateChanged = now
		if err := d.s.Update(tx, inv); err != nil {
			return err
		}
		ids = append(ids, inv.ID)
	}
	md, err := json.Marshal(deliveryMeta{Server: matrix.ServerName(b.MXID), Medium: b.Medium, Address: b.Address, MXID: b.MXID, InviteIDs: ids})
	if err != nil {
		return err
	}
	r := &queue.Record{Meta: md}
	if err := d.q.Enqueue(tx, r); err != nil {
		return err
	}
	if err := d.index(tx, r); err != nil {
		return err
	}
	tx.OnCommit(d.Wake)
	d.log.Info("invites resolved on bind", "invites", len(ids), "address", matrix.RedactEmail(b.Address), "mxid", b.MXID, "delivery", r.ID)
	return nil
}

// index writes a delivery's own index entries: by invite, and by address
// (for erasure).
func (d *Deliveries) index(tx *store.Tx, r *queue.Record) error {
	return d.s.st.indexDelivery(tx, toDelivery(r))
}

// unindex removes a deleted delivery's own index entries (queue.Options.OnDelete).
func (d *Deliveries) unindex(tx queue.Tx, r *queue.Record) error {
	t, ok := tx.(*store.Tx)
	if !ok {
		return fmt.Errorf("invites: onbind OnDelete needs a *store.Tx, got %T", tx)
	}
	return d.s.st.unindexDelivery(t, toDelivery(r))
}

// Wake tells the worker to look at the queue now. It never blocks.
func (d *Deliveries) Wake() { d.q.Wake() }

// Run is the worker: it delivers due deliveries (a few at once) in
// next-attempt order, sleeps until the next is due or Wake is called, and
// returns when ctx is done, after the attempts under way have stopped.
// Deliveries pending before a restart are picked up at once.
func (d *Deliveries) Run(ctx context.Context) error { return d.q.Run(ctx) }

// onbindInvite is one entry of the body's invites[].
type onbindInvite struct {
	Medium  string          `json:"medium"`
	Address string          `json:"address"`
	MXID    string          `json:"mxid"`
	RoomID  string          `json:"room_id"`
	Sender  string          `json:"sender"`
	Signed  json.RawMessage `json:"signed"`
}

type onbindBody struct {
	Medium  string         `json:"medium"`
	Address string         `json:"address"`
	MXID    string         `json:"mxid"`
	Invites []onbindInvite `json:"invites"`
}

// body builds the onbind body from the invites still deliverable: resolved
// to this mxid and not revoked, declined or erased since. signed is exactly
// {mxid, token} (Dendrite re-marshals only those and signatures) signed with
// one Herald long-term key: see signForInvite.
func (d *Deliveries) body(dl *Delivery) ([]byte, int, error) {
	b := onbindBody{Medium: dl.Medium, Address: dl.Address, MXID: dl.MXID, Invites: []onbindInvite{}}
	err := d.db.View(func(tx *store.Tx) error {
		for _, id := range dl.InviteIDs {
			inv, err := d.s.getTx(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if inv.State != StateResolved || inv.ResolvedMXID != dl.MXID || inv.Token == "" {
				continue
			}
			signed, err := d.s.signForInvite(inv, map[string]string{"mxid": dl.MXID, "token": inv.Token})
			if err != nil {
				return err
			}
			raw, err := json.Marshal(signed)
			if err != nil {
				return err
			}
			b.Invites = append(b.Invites, onbindInvite{Medium: inv.Medium, Address: inv.Address, MXID: dl.MXID,
				RoomID: inv.RoomID, Sender: inv.Sender, Signed: raw})
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	raw, err := json.Marshal(b)
	return raw, len(b.Invites), err
}

// deliver makes one attempt at a delivery: it builds the body from the
// invites still deliverable (none left: cancelled, no attempt), POSTs it,
// and classifies the answer: 2xx delivered; 429 (with its Retry-After), 5xx
// and no answer retried; any other status refused for good.
func (d *Deliveries) deliver(ctx context.Context, r *queue.Record) queue.Outcome {
	dl := toDelivery(r)
	body, n, err := d.body(&dl)
	if err != nil {
		return queue.Outcome{Class: queue.Temporary, Reply: "building the onbind body: " + err.Error()}
	}
	if n == 0 {
		return queue.Outcome{Class: queue.Cancel, Reply: "no invite left to deliver (revoked, declined or erased)"}
	}
	resp, sendErr := d.opts.Notifier.OnBind(ctx, dl.Server, body)
	if sendErr != nil && ctx.Err() != nil {
		return queue.Outcome{Class: queue.Abandon} // cut short by shutdown: not an attempt
	}
	det := attemptDetail{Method: http.MethodPost, Invites: n}
	out := queue.Outcome{Class: queue.Permanent}
	if sendErr != nil {
		out.Class, out.Reply = queue.Temporary, short(sendErr.Error())
	} else {
		det.Status, out.Reply = resp.Status, short(string(resp.Body))
		if resp.Method != "" {
			det.Method = resp.Method
		}
		out.LastError = fmt.Sprintf("%d %s", resp.Status, out.Reply)
		switch {
		case resp.Status >= 200 && resp.Status < 300:
			out.Class = queue.OK
		case resp.Status == http.StatusTooManyRequests:
			out.Class = queue.Temporary
			out.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), d.s.opts.Now())
		case resp.Status >= 500:
			out.Class = queue.Temporary
		}
	}
	out.Detail, _ = json.Marshal(det)
	return out
}

// recorded logs and counts an attempt once its record is committed.
func (d *Deliveries) recorded(r *queue.Record, o queue.Outcome) {
	dl := toDelivery(r)
	a := dl.LastAttempt()
	if o.Class == queue.Cancel || a == nil {
		return
	}
	result := ""
	switch {
	case dl.State == DeliveryDelivered:
		result = "delivered"
		d.log.Info("onbind delivered", "delivery", dl.ID, "server", dl.Server, "invites", a.Invites, "status", a.Status)
	case o.Class == queue.Permanent:
		result = "refused"
		d.log.Warn("onbind refused", "delivery", dl.ID, "server", dl.Server, "status", a.Status)
	case dl.State == DeliveryFailed:
		result = "gave_up"
		if a.Status == 0 {
			d.log.Warn("onbind delivery given up", "delivery", dl.ID, "server", dl.Server, "status", a.Status, "err", a.Reply)
		} else {
			d.log.Warn("onbind delivery given up", "delivery", dl.ID, "server", dl.Server, "status", a.Status)
		}
	default:
		result = "retry"
		in := dl.NextAttempt.Sub(a.At)
		if a.Status == 0 {
			// No answer (status 0): the error is the only thing that says why.
			d.log.Info("onbind delivery will be retried", "delivery", dl.ID, "server", dl.Server, "in", in, "status", a.Status, "err", a.Reply)
		} else {
			d.log.Info("onbind delivery will be retried", "delivery", dl.ID, "server", dl.Server, "in", in, "status", a.Status)
		}
	}
	if d.opts.OnAttempt != nil {
		d.opts.OnAttempt(result)
	}
}

// LastAttempt is the latest attempt, or nil.
func (dl *Delivery) LastAttempt() *DeliveryAttempt {
	if len(dl.Attempts) == 0 {
		return nil
	}
	return &dl.Attempts[len(dl.Attempts)-1]
}

func toDelivery(r *queue.Record) Delivery {
	var md deliveryMeta
	_ = json.Unmarshal(r.Meta, &md) // written by resolve; empty fields if not
	st := DeliveryState(r.State)
	if r.State == queue.Done {
		st = DeliveryDelivered
	}
	dl := Delivery{ID: r.ID, Server: md.Server, Medium: md.Medium, Address: md.Address, MXID: md.MXID, InviteIDs: md.InviteIDs,
		State: st, Created: r.Created, NextAttempt: r.NextAttempt, RetryFrom: r.RetryFrom, RetryBase: r.RetryBase,
		Finished: r.Finished, LastError: r.LastError, Attempts: make([]DeliveryAttempt, 0, len(r.Attempts))}
	for _, a := range r.Attempts {
		var det attemptDetail
		_ = json.Unmarshal(a.Detail, &det)
		dl.Attempts = append(dl.Attempts, DeliveryAttempt{At: a.At, Method: det.Method, Status: det.Status, Reply: a.Reply,
			Invites: det.Invites, OK: a.OK, Retryable: a.Temporary})
	}
	return dl
}

func deliveryErr(err error) error { return queue.MapErr(err, ErrNoDelivery, ErrDeliveryState) }

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
		if n > 1<<31 {
			n = 1 << 31
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func short(s string) string {
	s = strings.TrimSpace(s)
	const limit = 300
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// Get returns one delivery with its attempts.
func (d *Deliveries) Get(id uint64) (*Delivery, error) {
	r, err := d.q.Get(context.Background(), id)
	if err != nil {
		return nil, deliveryErr(err)
	}
	dl := toDelivery(r)
	return &dl, nil
}

// List returns the deliveries matching f, newest first, and how many match
// in all. A filter on the state alone pages through the state index and
// counts from the state counters; Server and MXID filters walk the records.
func (d *Deliveries) List(f DeliveryFilter) ([]Delivery, int, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	st := queue.State(f.State)
	if f.State == DeliveryDelivered {
		st = queue.Done
	}
	ctx := context.Background()
	if f.Server == "" && f.MXID == "" {
		rs, err := d.q.List(ctx, queue.Page{State: st, Offset: f.Offset, Limit: f.Limit})
		if err != nil {
			return nil, 0, err
		}
		c, err := d.q.Stats(ctx)
		total := c.Pending + c.Done + c.Failed + c.Cancelled
		switch st {
		case queue.Pending:
			total = c.Pending
		case queue.Done:
			total = c.Done
		case queue.Failed:
			total = c.Failed
		case queue.Cancelled:
			total = c.Cancelled
		}
		out := make([]Delivery, 0, len(rs))
		for i := range rs {
			out = append(out, toDelivery(&rs[i]))
		}
		return out, total, err
	}
	var out []Delivery
	total := 0
	var before uint64
	for {
		rs, err := d.q.List(ctx, queue.Page{State: st, Before: before, Limit: 500})
		if err != nil {
			return nil, 0, err
		}
		if len(rs) == 0 {
			return out, total, nil
		}
		for i := range rs {
			dl := toDelivery(&rs[i])
			if (f.Server != "" && dl.Server != f.Server) || (f.MXID != "" && dl.MXID != f.MXID) {
				continue
			}
			if total >= f.Offset && len(out) < f.Limit {
				out = append(out, dl)
			}
			total++
		}
		before = rs[len(rs)-1].ID
	}
}

// ByInvite returns every delivery that carried the invite, oldest first.
func (d *Deliveries) ByInvite(inviteID uint64) ([]Delivery, error) {
	var out []Delivery
	err := d.db.View(func(tx *store.Tx) error {
		out = nil
		ids, err := d.s.st.deliveriesOf(tx, inviteID)
		if err != nil {
			return err
		}
		for _, id := range ids {
			r, err := d.be.Read(tx, id, false)
			if err != nil {
				return deliveryErr(err)
			}
			out = append(out, toDelivery(r))
		}
		return nil
	})
	return out, err
}

// Retry makes failed, cancelled (or pending) deliveries due now with a
// fresh retry budget, all or none (one transaction).
func (d *Deliveries) Retry(ids ...uint64) error {
	return deliveryErr(d.q.Retry(context.Background(), ids...))
}

// Drop cancels pending (or failed) deliveries, all or none: they are not
// attempted again unless retried. Their history is kept.
func (d *Deliveries) Drop(ids ...uint64) error {
	return deliveryErr(d.q.Drop(context.Background(), "dropped by an operator", ids...))
}

// Stats counts deliveries by state (from the queue's counters) and the
// failed attempts of the last 24 hours (from its index of failures).
func (d *Deliveries) Stats() (DeliveryStats, error) {
	c, err := d.q.Stats(context.Background())
	return DeliveryStats{Pending: c.Pending, Delivered: c.Done, Failed: c.Failed, Cancelled: c.Cancelled,
		FailedAttempts: c.FailedAttempts}, err
}

// deliveryActive reports whether the invite was carried by a delivery the
// homeserver accepted, or by one still under way.
// Without the onbind queue opened (OpenDeliveries) there are none.
func (s *Service) deliveryActive(tx *store.Tx, inviteID uint64) (delivered, pending bool, err error) {
	if s.dq == nil {
		return false, false, nil
	}
	ids, err := s.st.deliveriesOf(tx, inviteID)
	if err != nil {
		return false, false, err
	}
	for _, id := range ids {
		r, err := s.dq.Read(tx, id, false)
		if err != nil {
			return false, false, err
		}
		switch r.State {
		case queue.Done:
			delivered = true
		case queue.Pending:
			pending = true
		}
	}
	return delivered, pending, nil
}

// signForInvite signs obj with the long-term key whose public half the
// invite's m.room.third_party_invite event carries (recorded at store-invite),
// so a key rotation between invite and bind does not break it; if that key
// is gone from the ring, with the current key.
//
// Exactly one signature: Synapse tries each public key of the event against
// the signatures in order and gives up on a key at the first signature that
// does not verify, so a second signature by another key can make it refuse.
func (s *Service) signForInvite(inv *Invite, obj any) (map[string]json.RawMessage, error) {
	ring := s.opts.Ring
	if k, ok := ring.Get(inv.KeyID); ok && inv.KeyID != "" {
		return keys.SignJSON(obj, inv.signingServer(ring.ServerName()), k.ID, k.Private)
	}
	return ring.Sign(obj)
}
