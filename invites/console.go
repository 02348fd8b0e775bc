package invites

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The console's view of invites: states derived from an invite, its email
// and its deliveries, and its timeline. The console shows these; the rules
// live here, beside the states they derive from.

// Derived states: a pending invite whose email the SMTP server accepted is
// "emailed"; one whose email failed for good, or a resolved invite every
// delivery of which failed, is "failed". A pending invite past its expiry
// that the sweep has not reached yet shows as expired.
const (
	StateEmailed = "emailed"
	StateFailed  = "failed"
)

// DisplayStates lists every state the console shows, in display order.
var DisplayStates = []string{StatePending, StateEmailed, StateResolved, StateExpired, StateRevoked, StateDeclined, StateFailed}

// sentMails remembers the ids of invite mails found sent: a sent mail stays
// sent, so the console reads each pending invite's mail once rather than on
// every dashboard load. Entries are kept only for pending invites
// (DisplayCounts forgets the others), so the set is bounded by them.
type sentMails struct {
	mu sync.Mutex
	m  map[uint64]struct{}
}

func (c *sentMails) has(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[id]
	return ok
}

func (c *sentMails) add(id uint64) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[uint64]struct{}{}
	}
	c.m[id] = struct{}{}
	c.mu.Unlock()
}

// keep forgets every id not in live.
func (c *sentMails) keep(live map[uint64]bool) {
	c.mu.Lock()
	for id := range c.m {
		if !live[id] {
			delete(c.m, id)
		}
	}
	c.mu.Unlock()
}

// mailState is the state of an invite's email ("" when unknown).
func (s *Service) mailState(inv *Invite) mailer.State {
	if s.opts.Mailer == nil || inv.MailID == 0 {
		return ""
	}
	if s.sent.has(inv.MailID) {
		return mailer.Sent
	}
	st, err := s.opts.Mailer.State(inv.MailID)
	if err != nil {
		return ""
	}
	if st == mailer.Sent {
		s.sent.add(inv.MailID)
	}
	return st
}

// allDeliveriesFailed reports whether inv has deliveries and all failed.
func (s *Service) allDeliveriesFailed(tx *store.Tx, id uint64) bool {
	ids, err := s.st.deliveriesOf(tx, id)
	if err != nil || len(ids) == 0 || s.dq == nil {
		return false
	}
	for _, did := range ids {
		r, err := s.dq.Read(tx, did, false)
		if err != nil || r.State != queue.Failed {
			return false
		}
	}
	return true
}

// DisplayState is inv's state as the console shows it. It reads the
// invite's email and deliveries in transactions of its own: call it outside
// any transaction (a nested read transaction can deadlock with a writer
// growing the file).
func (s *Service) DisplayState(inv *Invite, now time.Time) string {
	failed := false
	if inv.State == StateResolved {
		_ = s.db.View(func(tx *store.Tx) error {
			failed = s.allDeliveriesFailed(tx, inv.ID)
			return nil
		})
	}
	return s.displayState(inv, now, failed)
}

// displayState derives the state from inv, its email's state (read here)
// and whether every delivery of it failed.
func (s *Service) displayState(inv *Invite, now time.Time, deliveriesFailed bool) string {
	switch inv.State {
	case StatePending:
		if inv.Expired(now) {
			return StateExpired
		}
		switch s.mailState(inv) {
		case mailer.Sent:
			return StateEmailed
		case mailer.Failed:
			return StateFailed
		}
		return StatePending
	case StateResolved:
		if deliveriesFailed {
			return StateFailed
		}
	}
	return inv.State
}

// Event is one entry of an invite's timeline as the console shows it: the
// invite's own (Timeline), its upstream vouch (VouchEvents), and the attempts
// of its mails and deliveries the console merges in.
type Event struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // created, email, bound, delivery, resolved, expired, revoked, declined, resent
	Detail string    `json:"detail,omitempty"`
	OK     bool      `json:"ok"`
	Link   string    `json:"-"` // the console page of the mail or delivery, if any
}

// Timeline is what inv records about itself, oldest first (its mails and
// deliveries have their own records).
func (inv *Invite) Timeline(now time.Time) []Event {
	via := inv.Via
	if via == "" {
		via = "v2"
	}
	out := []Event{{At: inv.Created, Kind: "created", Detail: "store-invite (" + via + ") from " + inv.Homeserver, OK: true}}
	switch inv.State {
	case StateResolved:
		// Herald resolves an invite when its address is bound; the onbind
		// deliveries (with the homeserver's answers) follow in the timeline.
		out = append(out,
			Event{At: inv.StateChanged, Kind: "bound", Detail: "address bound to " + inv.ResolvedMXID, OK: true},
			Event{At: inv.StateChanged, Kind: "resolved", Detail: "onbind queued for the homeserver of " + inv.ResolvedMXID, OK: true})
	case StateExpired, StateRevoked, StateDeclined:
		out = append(out, Event{At: inv.StateChanged, Kind: inv.State, OK: false})
	case StatePending:
		if inv.Expired(now) { // not yet swept: expired all the same
			out = append(out, Event{At: inv.ExpiresAt, Kind: StateExpired, OK: false})
		}
	}
	return out
}

// DisplayCounts counts invites by displayed state (every one of
// DisplayStates present). The stored states come from the counters; only the
// pending invites (those waiting for their address to be bound, bounded by
// the expiry period) are read, with their email's state, and the invites of
// failed deliveries.
func (s *Service) DisplayCounts(now time.Time, failedDeliveries func(yield func(inviteID uint64) bool)) (map[string]int, error) {
	var failedIDs []uint64
	if failedDeliveries != nil {
		for id := range failedDeliveries {
			failedIDs = append(failedIDs, id)
		}
	}
	slices.Sort(failedIDs)
	failedIDs = slices.Compact(failedIDs)
	out := make(map[string]int, len(DisplayStates))
	var pending []pendingEntry
	err := s.db.View(func(tx *store.Tx) error {
		for st, n := range s.CountsTx(tx) {
			out[st] = n
		}
		out[StatePending], out[StateEmailed], out[StateFailed] = 0, 0, 0
		var err error
		if pending, err = s.st.pending(tx, 0, 0); err != nil {
			return err
		}
		for _, id := range failedIDs {
			inv, err := s.getTx(tx, id)
			if err == nil && inv.State == StateResolved && s.allDeliveriesFailed(tx, id) {
				out[StateResolved]--
				out[StateFailed]++
			}
		}
		return nil
	})
	// The email states are read after the transaction (see DisplayState).
	live := make(map[uint64]bool, len(pending))
	for _, e := range pending {
		inv := &Invite{ID: e.id, State: StatePending, MailID: e.mailID, ExpiresAt: e.expiresAt}
		out[s.displayState(inv, now, false)]++
		live[e.mailID] = true
	}
	s.sent.keep(live)
	return out, err
}

// FailedDeliveryInvites yields the invite ids of failed deliveries, paging
// through the queue's state index.
func (d *Deliveries) FailedDeliveryInvites(yield func(uint64) bool) {
	var before uint64
	for {
		rs, err := d.q.List(context.Background(), queue.Page{State: queue.Failed, Before: before, Limit: 500})
		if err != nil || len(rs) == 0 {
			return
		}
		for i := range rs {
			for _, inv := range toDelivery(&rs[i]).InviteIDs {
				if !yield(inv) {
					return
				}
			}
		}
		before = rs[len(rs)-1].ID
	}
}

// ListDisplayed is List for a displayed state (DisplayStates; "" for any):
// newest first, Offset and Limit counted in displayed invites. A stored state
// is List's; pending and emailed walk the pending invites; expired adds the
// pending invites past their expiry (found in the expiry index); failed walks
// the pending invites and the invites of failed deliveries.
func (s *Service) ListDisplayed(f Filter, state string, now time.Time, failedDeliveries func(yield func(uint64) bool)) ([]*Invite, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	switch state {
	case StatePending, StateEmailed, StateExpired, StateFailed:
	default:
		f.State = state
		l, _, err := s.List(f)
		return l, err
	}
	if state == StatePending || state == StateEmailed {
		return s.listPending(f, state, now)
	}
	var failedIDs []uint64
	if state == StateFailed {
		if failedDeliveries != nil {
			for id := range failedDeliveries {
				failedIDs = append(failedIDs, id)
			}
		}
		// Pending invites whose email failed, found from the state index
		// and the emails (read outside the transaction).
		var pending []pendingEntry
		if err := s.db.View(func(tx *store.Tx) (err error) {
			pending, err = s.st.pending(tx, 0, 0)
			return err
		}); err != nil {
			return nil, err
		}
		for _, e := range pending {
			if s.displayState(&Invite{ID: e.id, State: StatePending, MailID: e.mailID, ExpiresAt: e.expiresAt}, now, false) == StateFailed {
				failedIDs = append(failedIDs, e.id)
			}
		}
	}
	var out []*Invite
	type candidate struct {
		inv    *Invite
		failed bool // every delivery failed
	}
	var cands []candidate
	err := s.db.View(func(tx *store.Tx) error {
		cands = nil
		// candidates yields ids, highest first (a few may repeat).
		var candidates func(yield func(uint64) bool)
		var cerr error
		switch state {
		case StateExpired:
			// Pending past expiry, not swept yet (the start of the expiry
			// index, at most a sweep period's worth), merged into the
			// expired invites.
			due, err := s.st.expiryDue(tx, now, 0)
			if err != nil {
				return err
			}
			slices.Sort(due)
			candidates = func(yield func(uint64) bool) {
				stopped := false
				cerr = s.descendAll(tx, source{byState, StateExpired}, 0, func(id uint64) (bool, error) {
					for len(due) > 0 && due[len(due)-1] > id {
						if !yield(due[len(due)-1]) {
							stopped = true
							return false, nil
						}
						due = due[:len(due)-1]
					}
					if !yield(id) {
						stopped = true
						return false, nil
					}
					return true, nil
				})
				if stopped || cerr != nil {
					return
				}
				for i := len(due) - 1; i >= 0; i-- {
					if !yield(due[i]) {
						return
					}
				}
			}
		case StateFailed:
			ids := failedIDs
			slices.Sort(ids)
			ids = slices.Compact(ids)
			candidates = func(yield func(uint64) bool) {
				for i := len(ids) - 1; i >= 0; i-- {
					if !yield(ids[i]) {
						return
					}
				}
			}
		}
		f.State = ""
		for id := range candidates {
			inv, err := s.getTx(tx, id)
			if err != nil || !f.match(inv) {
				continue
			}
			cands = append(cands, candidate{inv, inv.State == StateResolved && s.allDeliveriesFailed(tx, id)})
			// Enough once the stored state alone settles the page (expired
			// invites); the others depend on their email, read below.
			if state == StateExpired && len(cands) >= f.Offset+f.Limit {
				break
			}
		}
		return cerr
	})
	if err != nil {
		return nil, err
	}
	skip := f.Offset
	for _, c := range cands {
		if len(out) >= f.Limit {
			break
		}
		if s.displayState(c.inv, now, c.failed) != state {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		out = append(out, c.inv)
	}
	return out, nil
}

// listPending is ListDisplayed for pending and emailed: it walks the pending
// invites from the newest in read transactions of at most 256 invites, and
// reads their emails' states between them, until the page is full.
func (s *Service) listPending(f Filter, state string, now time.Time) ([]*Invite, error) {
	f.State = ""
	var out []*Invite
	skip := f.Offset
	var before uint64
	for {
		var chunk []*Invite
		more := false
		err := s.db.View(func(tx *store.Tx) error {
			chunk, more = nil, false
			entries, err := s.st.pending(tx, before, listPage)
			if err != nil {
				return err
			}
			more = len(entries) == listPage
			var ids []uint64
			for _, e := range entries {
				// The entry's mail id and expiry settle many invites
				// without decoding them: an expired one is neither, and
				// one whose mail is known sent is not pending.
				expired := !e.expiresAt.IsZero() && !now.Before(e.expiresAt)
				if expired || state == StatePending && s.sent.has(e.mailID) {
					continue
				}
				ids = append(ids, e.id)
			}
			invs, err := s.st.getMany(tx, ids)
			if err != nil {
				return err
			}
			for _, inv := range invs {
				if f.match(inv) {
					chunk = append(chunk, inv)
				}
			}
			if len(entries) > 0 {
				before = entries[len(entries)-1].id
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, inv := range chunk {
			if s.displayState(inv, now, false) != state {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			out = append(out, inv)
			if len(out) >= f.Limit {
				return out, nil
			}
		}
		if !more {
			return out, nil
		}
	}
}
