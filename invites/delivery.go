package invites

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/federation"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// Onbind deliveries: a durable queue, like the mailer's outbox. A bind
// resolves the address's pending invites and queues one delivery per invitee
// homeserver in the bind's own transaction; the worker POSTs it to
// {homeserver}/_matrix/federation/v1/3pid/onbind after the commit, and
// retries with capped exponential backoff until it is accepted, refused for
// good, or delivery.give_up_after has passed.
//
//	invites_deliveries:       id -> JSON Delivery
//	invites_delivery_due:     next attempt (unix ns) + id -> nil, pending only
//	invites_delivery_state:   state 0 id -> nil
//	invites_delivery_invite:  invite id + delivery id -> nil
var (
	bktDeliveries     = []byte("invites_deliveries")
	bktDeliveryDue    = []byte("invites_delivery_due")
	bktDeliveryState  = []byte("invites_delivery_state")
	bktDeliveryInvite = []byte("invites_delivery_invite")
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

// DeliveryStats counts deliveries by state.
type DeliveryStats struct {
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Failed    int `json:"failed"`
	Cancelled int `json:"cancelled"`
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

// Deliveries is the durable onbind queue.
type Deliveries struct {
	s    *Service
	db   *bolt.DB
	opts DeliveryOptions
	log  *slog.Logger
	wake chan struct{}

	mu       sync.Mutex
	inFlight map[uint64]bool
	// stalled: due deliveries that could not be loaded or prepared (a
	// storage error), not attempted again before until. In memory: after a
	// restart each is tried once more, then backs off again.
	stalled map[uint64]stall
}

type stall struct {
	n     int
	until time.Time
}

var (
	// ErrNoDelivery: no delivery with that id.
	ErrNoDelivery = errors.New("invites: no such delivery")
	// ErrDeliveryState: the action does not apply in the delivery's state.
	ErrDeliveryState = errors.New("invites: not possible in the delivery's state")
)

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
	if opts.MaxRetryAfter <= 0 {
		opts.MaxRetryAfter = 6 * time.Hour
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Log == nil {
		opts.Log = s.opts.Log
	}
	if err := store.Buckets(s.db, bktDeliveries, bktDeliveryDue, bktDeliveryState, bktDeliveryInvite); err != nil {
		return nil, err
	}
	d := &Deliveries{s: s, db: s.db, opts: opts, log: opts.Log.With("component", "onbind"),
		wake: make(chan struct{}, 1), inFlight: map[uint64]bool{}, stalled: map[uint64]stall{}}
	s.opts.Identity.OnBind(d.resolve)
	return d, nil
}

// resolve is the bind hook: inside the bind's transaction it marks every
// pending, unexpired invite for the address resolved to the new mxid and
// queues one delivery for them to the mxid's homeserver. Invites of an
// address bound earlier were resolved then, so a recycled address receives
// none of them.
func (d *Deliveries) resolve(tx *bolt.Tx, b identity.Binding) error {
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
	dl := &Delivery{Server: identity.ServerOf(b.MXID), Medium: b.Medium, Address: b.Address, MXID: b.MXID,
		InviteIDs: ids, State: DeliveryPending, Created: now, NextAttempt: now, RetryFrom: now, Attempts: []DeliveryAttempt{}}
	if err := d.enqueue(tx, dl); err != nil {
		return err
	}
	tx.OnCommit(d.Wake)
	d.log.Info("invites resolved on bind", "invites", len(ids), "address", identity.RedactEmail(b.Address), "mxid", b.MXID, "delivery", dl.ID)
	return nil
}

func (d *Deliveries) enqueue(tx *bolt.Tx, dl *Delivery) error {
	id, err := tx.Bucket(bktDeliveries).NextSequence()
	if err != nil {
		return err
	}
	dl.ID = id
	if err := putDelivery(tx, dl); err != nil {
		return err
	}
	if err := tx.Bucket(bktDeliveryDue).Put(deliveryDueKey(dl), nil); err != nil {
		return err
	}
	if err := tx.Bucket(bktDeliveryState).Put(deliveryStateKey(dl.State, id), nil); err != nil {
		return err
	}
	for _, inv := range dl.InviteIDs {
		if err := tx.Bucket(bktDeliveryInvite).Put(append(store.U64(inv), store.U64(id)...), nil); err != nil {
			return err
		}
	}
	return nil
}

// Wake tells the worker to look at the queue now. It never blocks.
func (d *Deliveries) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run is the worker: it delivers due deliveries (a few at once) in
// next-attempt order, sleeps until the next is due or Wake is called, and
// returns when ctx is done, after the attempts under way have stopped.
// Deliveries pending before a restart are picked up at once.
func (d *Deliveries) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	done := make(chan struct{}, d.opts.Workers)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		due, next, err := d.due(d.opts.Workers - d.running())
		if err != nil {
			d.log.Error("read onbind queue", "err", err)
			next = d.s.opts.Now().Add(5 * time.Second)
		}
		for _, id := range due {
			d.mu.Lock()
			d.inFlight[id] = true
			d.mu.Unlock()
			wg.Add(1)
			go func(id uint64) {
				defer wg.Done()
				func() { // a panic is logged and counted, and the slot freed
					defer background.Recover(d.log, "onbind delivery attempt")
					d.attempt(ctx, id)
				}()
				d.mu.Lock()
				delete(d.inFlight, id)
				d.mu.Unlock()
				select { // never block: a full buffer already wakes the loop
				case done <- struct{}{}:
				default:
				}
			}(id)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = min(max(next.Sub(d.s.opts.Now()), time.Millisecond), time.Hour)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		case <-done:
		case <-timer.C:
		}
	}
}

func (d *Deliveries) running() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inFlight)
}

// due returns up to n due deliveries not already being attempted, and when
// the next not-yet-due one is due (zero: none).
func (d *Deliveries) due(n int) (ids []uint64, next time.Time, err error) {
	now := d.s.opts.Now()
	var stalledNext time.Time
	defer func() {
		if !stalledNext.IsZero() && (next.IsZero() || stalledNext.Before(next)) {
			next = stalledNext
		}
	}()
	err = d.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktDeliveryDue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) != 16 {
				continue
			}
			at := time.Unix(0, int64(u64(k[:8])))
			id := u64(k[8:])
			if at.After(now) {
				next = at
				return nil
			}
			d.mu.Lock()
			busy := d.inFlight[id]
			st, stalled := d.stalled[id]
			d.mu.Unlock()
			if busy {
				continue
			}
			if stalled && st.until.After(now) {
				if stalledNext.IsZero() || st.until.Before(stalledNext) {
					stalledNext = st.until
				}
				continue
			}
			if len(ids) >= n {
				next = now
				return nil
			}
			ids = append(ids, id)
		}
		return nil
	})
	return ids, next, err
}

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
	err := d.db.View(func(tx *bolt.Tx) error {
		for _, id := range dl.InviteIDs {
			inv, err := getTx(tx, id)
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

// stall backs a due delivery off that could not be loaded or prepared, like
// any failed attempt: without it the worker would pick it again at once, in
// a hot loop.
func (d *Deliveries) stall(id uint64) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.stalled[id]
	st.n++
	wait := d.backoff(st.n)
	st.until = d.s.opts.Now().Add(wait)
	d.stalled[id] = st
	return wait
}

func (d *Deliveries) attempt(ctx context.Context, id uint64) {
	dl, err := loadDelivery(d, id)
	if err != nil {
		d.log.Error("loading a due onbind delivery", "delivery", id, "err", err, "retry_in", d.stall(id))
		return
	}
	if dl.State != DeliveryPending {
		// Finished or dropped since it was found due (its due entry is gone
		// then); were the entry left behind, it must not spin either.
		d.log.Debug("due onbind delivery no longer pending", "delivery", id, "state", dl.State, "retry_in", d.stall(id))
		return
	}
	body, n, err := d.body(dl)
	if err != nil {
		d.log.Error("building onbind body", "delivery", id, "err", err, "retry_in", d.stall(id))
		return
	}
	d.mu.Lock()
	delete(d.stalled, id)
	d.mu.Unlock()
	if n == 0 {
		err := d.finish(id, func(dl *Delivery, now time.Time) {
			dl.State, dl.Finished, dl.LastError = DeliveryCancelled, now, "no invite left to deliver (revoked, declined or erased)"
		})
		if err != nil {
			d.log.Error("recording onbind delivery", "delivery", id, "err", err)
		}
		return
	}
	resp, sendErr := d.opts.Notifier.OnBind(ctx, dl.Server, body)
	if sendErr != nil && ctx.Err() != nil {
		return // cut short by shutdown: not an attempt; it runs again after the restart
	}
	var result string
	err = d.finish(id, func(dl *Delivery, now time.Time) {
		a := DeliveryAttempt{At: now, Method: http.MethodPost, Invites: n}
		var retryAfter time.Duration
		switch {
		case sendErr != nil:
			a.Reply, a.Retryable = short(sendErr.Error()), true
		default:
			a.Status, a.Reply = resp.Status, short(string(resp.Body))
			if resp.Method != "" {
				a.Method = resp.Method
			}
			switch {
			case resp.Status >= 200 && resp.Status < 300:
				a.OK = true
			case resp.Status == http.StatusTooManyRequests:
				a.Retryable = true
				retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
			case resp.Status >= 500:
				a.Retryable = true
			}
		}
		dl.Attempts = append(dl.Attempts, a)
		switch {
		case a.OK:
			result = "delivered"
			dl.State, dl.Finished, dl.LastError = DeliveryDelivered, now, ""
			d.log.Info("onbind delivered", "delivery", dl.ID, "server", dl.Server, "invites", n, "status", a.Status)
		case !a.Retryable:
			result = "refused"
			dl.State, dl.Finished, dl.LastError = DeliveryFailed, now, fmt.Sprintf("%d %s", a.Status, a.Reply)
			d.log.Warn("onbind refused", "delivery", dl.ID, "server", dl.Server, "status", a.Status)
		default:
			dl.LastError = a.Reply
			if a.Status != 0 {
				dl.LastError = fmt.Sprintf("%d %s", a.Status, a.Reply)
			}
			wait := max(d.backoff(len(dl.Attempts)-dl.RetryBase), min(retryAfter, d.opts.MaxRetryAfter))
			if !now.Add(wait).Before(dl.RetryFrom.Add(d.opts.GiveUpAfter)) {
				result = "gave_up"
				dl.State, dl.Finished = DeliveryFailed, now
				dl.LastError = "gave up after " + d.opts.GiveUpAfter.String() + ": " + dl.LastError
				if sendErr != nil {
					d.log.Warn("onbind delivery given up", "delivery", dl.ID, "server", dl.Server, "status", a.Status, "err", a.Reply)
				} else {
					d.log.Warn("onbind delivery given up", "delivery", dl.ID, "server", dl.Server, "status", a.Status)
				}
				return
			}
			result = "retry"
			dl.NextAttempt = now.Add(wait)
			if sendErr != nil {
				// No answer (status 0): the error is the only thing that says why.
				d.log.Info("onbind delivery will be retried", "delivery", dl.ID, "server", dl.Server, "in", wait, "status", a.Status, "err", a.Reply)
			} else {
				d.log.Info("onbind delivery will be retried", "delivery", dl.ID, "server", dl.Server, "in", wait, "status", a.Status)
			}
		}
	})
	if err != nil {
		d.log.Error("recording onbind attempt", "delivery", id, "err", err)
	} else if result != "" && d.opts.OnAttempt != nil {
		d.opts.OnAttempt(result)
	}
}

// loadDelivery reads a due delivery for an attempt; tests replace it to
// make loading fail.
var loadDelivery = (*Deliveries).Get

// backoff after the n-th failed attempt: MinBackoff·2^(n-1), at most MaxBackoff.
func (d *Deliveries) backoff(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	f := float64(d.opts.MinBackoff) * math.Pow(2, float64(n-1))
	if f > float64(d.opts.MaxBackoff) {
		return d.opts.MaxBackoff
	}
	return time.Duration(f)
}

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

// finish applies change to a pending delivery and keeps the indexes right.
func (d *Deliveries) finish(id uint64, change func(dl *Delivery, now time.Time)) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		dl, err := getDelivery(tx, id)
		if err != nil || dl.State != DeliveryPending {
			return err
		}
		if err := tx.Bucket(bktDeliveryDue).Delete(deliveryDueKey(dl)); err != nil {
			return err
		}
		change(dl, d.s.opts.Now().UTC())
		return d.rewrite(tx, dl, DeliveryPending)
	})
}

// rewrite stores dl, whose state was from, and its state and due entries.
func (d *Deliveries) rewrite(tx *bolt.Tx, dl *Delivery, from DeliveryState) error {
	if from != dl.State {
		if err := tx.Bucket(bktDeliveryState).Delete(deliveryStateKey(from, dl.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bktDeliveryState).Put(deliveryStateKey(dl.State, dl.ID), nil); err != nil {
			return err
		}
	}
	if dl.State == DeliveryPending {
		if err := tx.Bucket(bktDeliveryDue).Put(deliveryDueKey(dl), nil); err != nil {
			return err
		}
	}
	return putDelivery(tx, dl)
}

// Get returns one delivery with its attempts.
func (d *Deliveries) Get(id uint64) (*Delivery, error) {
	var dl *Delivery
	err := d.db.View(func(tx *bolt.Tx) error {
		var err error
		dl, err = getDelivery(tx, id)
		return err
	})
	return dl, err
}

// List returns the deliveries matching f, newest first, and how many match in all.
func (d *Deliveries) List(f DeliveryFilter) ([]Delivery, int, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var out []Delivery
	total := 0
	err := d.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktDeliveries).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var dl Delivery
			if err := json.Unmarshal(v, &dl); err != nil {
				return err
			}
			if (f.State != "" && dl.State != f.State) || (f.Server != "" && dl.Server != f.Server) || (f.MXID != "" && dl.MXID != f.MXID) {
				continue
			}
			if total >= f.Offset && len(out) < f.Limit {
				out = append(out, dl)
			}
			total++
		}
		return nil
	})
	return out, total, err
}

// ByInvite returns every delivery that carried the invite, oldest first.
func (d *Deliveries) ByInvite(inviteID uint64) ([]Delivery, error) {
	var out []Delivery
	err := d.db.View(func(tx *bolt.Tx) error {
		prefix := store.U64(inviteID)
		c := tx.Bucket(bktDeliveryInvite).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			dl, err := getDelivery(tx, u64(k[8:]))
			if err != nil {
				return err
			}
			out = append(out, *dl)
		}
		return nil
	})
	return out, err
}

// Retry makes a failed, cancelled (or pending) delivery due now with a fresh
// retry budget.
func (d *Deliveries) Retry(id uint64) error {
	err := d.db.Update(func(tx *bolt.Tx) error {
		dl, err := getDelivery(tx, id)
		if err != nil {
			return err
		}
		if dl.State == DeliveryDelivered {
			return fmt.Errorf("%w: delivery %d was already delivered", ErrDeliveryState, id)
		}
		from := dl.State
		if from == DeliveryPending {
			if err := tx.Bucket(bktDeliveryDue).Delete(deliveryDueKey(dl)); err != nil {
				return err
			}
		}
		now := d.s.opts.Now().UTC()
		dl.State, dl.NextAttempt, dl.RetryFrom, dl.RetryBase, dl.Finished = DeliveryPending, now, now, len(dl.Attempts), time.Time{}
		return d.rewrite(tx, dl, from)
	})
	if err == nil {
		d.mu.Lock()
		delete(d.stalled, id) // the operator asked for an attempt now
		d.mu.Unlock()
		d.Wake()
	}
	return err
}

// Drop cancels a pending (or failed) delivery: it is not attempted again
// unless retried. Its history is kept.
func (d *Deliveries) Drop(id uint64) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		dl, err := getDelivery(tx, id)
		if err != nil {
			return err
		}
		if dl.State == DeliveryDelivered || dl.State == DeliveryCancelled {
			return fmt.Errorf("%w: delivery %d is %s", ErrDeliveryState, id, dl.State)
		}
		from := dl.State
		if from == DeliveryPending {
			if err := tx.Bucket(bktDeliveryDue).Delete(deliveryDueKey(dl)); err != nil {
				return err
			}
		}
		dl.State, dl.Finished, dl.LastError = DeliveryCancelled, d.s.opts.Now().UTC(), "dropped by an operator"
		return d.rewrite(tx, dl, from)
	})
}

// Stats counts deliveries by state.
func (d *Deliveries) Stats() (DeliveryStats, error) {
	var st DeliveryStats
	err := d.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktDeliveryState).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			switch DeliveryState(k[:max(0, len(k)-9)]) {
			case DeliveryPending:
				st.Pending++
			case DeliveryDelivered:
				st.Delivered++
			case DeliveryFailed:
				st.Failed++
			case DeliveryCancelled:
				st.Cancelled++
			}
		}
		return nil
	})
	return st, err
}

// deliveryActive reports whether the invite was carried by a delivery the
// homeserver accepted, or by one still under way.
func deliveryActive(tx *bolt.Tx, inviteID uint64) (delivered, pending bool, err error) {
	prefix := store.U64(inviteID)
	b := tx.Bucket(bktDeliveryInvite)
	if b == nil {
		return false, false, nil
	}
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		dl, err := getDelivery(tx, u64(k[8:]))
		if err != nil {
			return false, false, err
		}
		switch dl.State {
		case DeliveryDelivered:
			delivered = true
		case DeliveryPending:
			pending = true
		}
	}
	return delivered, pending, nil
}

func getDelivery(tx *bolt.Tx, id uint64) (*Delivery, error) {
	raw := tx.Bucket(bktDeliveries).Get(store.U64(id))
	if raw == nil {
		return nil, ErrNoDelivery
	}
	dl := new(Delivery)
	return dl, json.Unmarshal(raw, dl)
}

func putDelivery(tx *bolt.Tx, dl *Delivery) error {
	raw, err := json.Marshal(dl)
	if err != nil {
		return err
	}
	return tx.Bucket(bktDeliveries).Put(store.U64(dl.ID), raw)
}

func deliveryDueKey(dl *Delivery) []byte { return store.TimeKey(dl.NextAttempt, store.U64(dl.ID)) }

func deliveryStateKey(s DeliveryState, id uint64) []byte {
	return append(join0(string(s), ""), store.U64(id)...)
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
