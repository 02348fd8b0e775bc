package mailer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"mime"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/herald-im/herald/store"
	bolt "go.etcd.io/bbolt"
)

// State of a queued mail.
type State string

const (
	Pending State = "pending" // waiting for its next attempt
	Sent    State = "sent"    // accepted by the server (or written to the dev mailbox)
	Failed  State = "failed"  // refused permanently, or retried until the budget ran out
)

// Attempt is one try at sending.
type Attempt struct {
	At        time.Time `json:"at"`
	Reply     string    `json:"reply"` // the server's reply, or the error
	OK        bool      `json:"ok"`
	Temporary bool      `json:"temporary,omitempty"`
}

// Mail is a queued message and its history.
type Mail struct {
	ID          uint64    `json:"id"`
	To          string    `json:"to"`
	Subject     string    `json:"subject"`
	Kind        string    `json:"kind,omitempty"`
	Ref         string    `json:"ref,omitempty"`
	State       State     `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt"` // meaningful while Pending
	Attempts    []Attempt `json:"attempts"`
	// RetryFrom and RetryBase start the retry budget: at enqueue, and again
	// when an operator retries.
	RetryFrom time.Time `json:"retry_from"`
	RetryBase int       `json:"retry_base,omitempty"`
	// Raw is the composed message (filled by Get; nil in List and ByRef).
	Raw []byte `json:"-"`
}

// LastAttempt is the latest attempt, or nil.
func (m *Mail) LastAttempt() *Attempt {
	if len(m.Attempts) == 0 {
		return nil
	}
	return &m.Attempts[len(m.Attempts)-1]
}

// Filter selects mails for List. Zero fields match everything.
type Filter struct {
	State  State
	Kind   string
	Ref    string
	To     string // exact address, compared lower-cased
	Limit  int    // default 50
	Offset int
}

// Stats summarises the queue for a dashboard.
type Stats struct {
	Pending        int `json:"pending"`
	Sent           int `json:"sent"`
	Failed         int `json:"failed"`
	FailedAttempts int `json:"failed_attempts_24h"` // unsuccessful attempts in the last 24 hours
}

// Options configure a Queue.
type Options struct {
	Sender Sender // required
	From   string // From header and envelope sender, e.g. "Herald <herald@example.org>"
	// Now and NewMessageID are injectable for golden tests.
	Now          func() time.Time
	NewMessageID func() string // "<id@domain>"; default: random with From's domain
	// Backoff after the n-th failed attempt is MinBackoff·2^(n-1), at most MaxBackoff.
	MinBackoff time.Duration // default 30 s, or MaxBackoff if that is less
	MaxBackoff time.Duration // default 1 h
	// KindMaxBackoff lowers MaxBackoff for mail of a kind (e.g. "validation",
	// whose code is wanted within minutes); it also lowers the first wait
	// when it is below MinBackoff.
	KindMaxBackoff map[string]time.Duration
	// A mail that keeps failing temporarily becomes Failed after MaxAttempts
	// attempts (0: no limit) or GiveUpAfter since it was queued or retried
	// (default 48 h).
	MaxAttempts int
	GiveUpAfter time.Duration
	// SendTimeout bounds one Send. Default 2 min.
	SendTimeout time.Duration
	// Retention deletes sent and failed mail (with its history) this long
	// after it was queued. 0 keeps it forever.
	Retention time.Duration
	// OnSend, if set, is told the outcome of every recorded attempt (after
	// its transaction commits): result "sent", "deferred" (tried again
	// later) or "failed" (given up), and the SMTP reply class (ReplyClass).
	// Metrics count these.
	OnSend func(result, replyClass string)
}

var (
	// ErrNotFound: no mail with that id.
	ErrNotFound = errors.New("mailer: no such mail")
	// ErrState: the action does not apply to the mail's state.
	ErrState = errors.New("mailer: not possible in this state")
)

// Bucket names. Keys are big-endian so cursors walk them in order.
var (
	bktMail  = []byte("mail")       // id -> JSON Mail
	bktRaw   = []byte("mail_raw")   // id -> composed bytes
	bktDue   = []byte("mail_due")   // next attempt (unix ns) + id -> nil, pending mail only
	bktState = []byte("mail_state") // state + 0 + id -> nil
	bktRef   = []byte("mail_ref")   // ref + 0 + id -> nil
	bktTo    = []byte("mail_to")    // lower-cased address + 0 + id -> nil
	bktFail  = []byte("mail_fail")  // attempt time (unix ns) + id -> nil, failed attempts
)

// Queue is the durable outbox.
type Queue struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger
	wake chan struct{}

	pruneMu   sync.Mutex
	lastPrune time.Time
}

// Open creates the queue's buckets and returns the queue. Run starts the worker.
func Open(db *bolt.DB, opts Options, log *slog.Logger) (*Queue, error) {
	if opts.Sender == nil {
		return nil, errors.New("mailer: Options.Sender is required")
	}
	if _, err := mail.ParseAddress(opts.From); err != nil {
		return nil, fmt.Errorf("mailer: From %q: %w", opts.From, err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NewMessageID == nil {
		from := opts.From
		opts.NewMessageID = func() string { return NewMessageID(from) }
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 30 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Hour
	}
	if opts.MaxBackoff < opts.MinBackoff {
		// The cap wins: smtp.max_backoff below the default first wait
		// (30 s) is the operator's cap on every wait, the first included.
		opts.MinBackoff = opts.MaxBackoff
	}
	if opts.GiveUpAfter <= 0 {
		opts.GiveUpAfter = 48 * time.Hour
	}
	if opts.SendTimeout <= 0 {
		opts.SendTimeout = 2 * time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := store.Buckets(db, bktMail, bktRaw, bktDue, bktState, bktRef, bktTo, bktFail); err != nil {
		return nil, err
	}
	return &Queue{db: db, opts: opts, log: log.With("component", "mailer"), wake: make(chan struct{}, 1)}, nil
}

// Compose composes m with the queue's From, clock and Message-ID generator.
func (q *Queue) Compose(m Message) ([]byte, error) {
	return Compose(m, q.opts.From, q.opts.Now(), q.opts.NewMessageID())
}

// Prepared is a composed message ready to be stored by EnqueuePrepared. It
// holds no transaction state, so one Prepared may be enqueued again (bbolt's
// Batch may run its function twice). Ref may be changed before enqueueing:
// it is not part of the composed bytes.
type Prepared struct {
	To      string // the parsed recipient
	Subject string // as the console shows it (capped)
	Kind    string
	Ref     string
	Raw     []byte // the composed RFC 5322 message
}

// Prepare parses and composes m (recipient check, MIME composition,
// Message-ID and Date) without touching storage. Compose outside the write
// transaction, then store the result with EnqueuePrepared inside it: the
// single bbolt writer then spends its time only on the writes.
func (q *Queue) Prepare(m Message) (*Prepared, error) {
	to, err := ParseRecipient(m.To)
	if err != nil {
		return nil, err
	}
	m.To = to
	raw, err := q.Compose(m)
	if err != nil {
		return nil, err
	}
	subject := CapSubject(m.Subject)
	if m.Raw != nil {
		subject = rawSubject(raw)
	}
	return &Prepared{To: to, Subject: subject, Kind: m.Kind, Ref: m.Ref, Raw: raw}, nil
}

// Enqueue composes m and stores it as pending inside tx, the caller's write
// transaction, so the mail exists if and only if the caller's change commits.
// It sends nothing: call Wake after the commit. Callers on a hot path should
// Prepare before the transaction and call EnqueuePrepared inside it.
func (q *Queue) Enqueue(tx *bolt.Tx, m Message) (uint64, error) {
	p, err := q.Prepare(m)
	if err != nil {
		return 0, err
	}
	return q.EnqueuePrepared(tx, p)
}

// EnqueuePrepared stores p as pending inside tx, the caller's write
// transaction (see Enqueue). It only writes: it does not change p, so it is
// safe in a bbolt Batch function, which may run more than once.
func (q *Queue) EnqueuePrepared(tx *bolt.Tx, p *Prepared) (uint64, error) {
	b := tx.Bucket(bktMail)
	if b == nil {
		return 0, errors.New("mailer: buckets missing (was the queue opened on this database?)")
	}
	id, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	now := q.opts.Now()
	ml := &Mail{ID: id, To: p.To, Subject: p.Subject, Kind: p.Kind, Ref: p.Ref, State: Pending,
		Created: now, NextAttempt: now, RetryFrom: now, Attempts: []Attempt{}}
	k := store.U64(id)
	if err := tx.Bucket(bktRaw).Put(k, p.Raw); err != nil {
		return 0, err
	}
	if err := putMail(tx, ml); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bktDue).Put(dueKey(ml), nil); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bktState).Put(stateKey(Pending, id), nil); err != nil {
		return 0, err
	}
	if ml.Ref != "" {
		if err := tx.Bucket(bktRef).Put(idxKey(ml.Ref, id), nil); err != nil {
			return 0, err
		}
	}
	if err := tx.Bucket(bktTo).Put(idxKey(strings.ToLower(p.To), id), nil); err != nil {
		return 0, err
	}
	return id, nil
}

func rawSubject(raw []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	s := msg.Header.Get("Subject")
	if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = d
	}
	return CapSubject(s)
}

// Wake tells the worker to look at the queue now. Call it after the
// transaction that enqueued mail commits. It never blocks.
func (q *Queue) Wake() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run is the worker: it sends due mail in next-attempt order, one at a time,
// recording the attempts of a group of sends in one transaction (see
// maxGroup), sleeping until the next one is due or Wake is called, and returns nil when
// ctx is done. Pending mail from before a restart is picked up at once. If
// the Sender has a Close method it is called on return.
func (q *Queue) Run(ctx context.Context) error {
	if c, ok := q.opts.Sender.(interface{ Close() error }); ok {
		// Closed when Run ends, not while a panic unwinds it: the server
		// runs Run again after a panic (internal/background), with the
		// same sender.
		defer func() {
			if r := recover(); r != nil {
				panic(r)
			}
			c.Close()
		}()
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		q.prune()
		id, due, ok, err := q.next()
		if err != nil {
			q.log.Error("read outbox", "err", err)
			due, ok = q.opts.Now().Add(5*time.Second), true
			id = 0
		}
		wait := time.Hour
		if ok {
			wait = due.Sub(q.opts.Now())
			if wait <= 0 && id != 0 {
				if err := q.attemptDue(ctx); err == nil {
					continue
				}
				// The database failed: pause rather than spin (and resend).
				wait = 5 * time.Second
			}
			wait = max(wait, time.Millisecond)
			if wait > time.Hour {
				wait = time.Hour
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-q.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// next returns the first pending mail by next attempt.
func (q *Queue) next() (id uint64, due time.Time, ok bool, err error) {
	err = q.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bktDue).Cursor().First()
		if len(k) != 16 {
			return nil
		}
		due = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
		id = binary.BigEndian.Uint64(k[8:])
		ok = true
		return nil
	})
	return
}

// The worker records attempts in one transaction per group of sends (up to
// maxGroup mails, or what was sent in maxGroupWait), not one per send: its
// commits share bbolt's single writer, and the disk's fsync, with every
// request that writes. A success is recorded before the mail can be picked
// again, so nothing is sent twice after a recorded success; a crash can only
// resend the few mails sent since the last recorded group, as a crash between
// a send and its record always could.
const (
	maxGroup     = 32
	maxGroupWait = 200 * time.Millisecond
)

type dueMail struct {
	key []byte // its mail_due key as found
	ml  *Mail
	raw []byte
}

type outcome struct {
	due   dueMail
	at    Attempt
	class string // the SMTP reply class for Options.OnSend
}

// attemptDue sends the mail due now, in next-attempt order (at most
// maxGroup of it), and records every outcome.
func (q *Queue) attemptDue(ctx context.Context) error {
	now := q.opts.Now()
	var due []dueMail
	var stale [][]byte
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktDue).Cursor()
		for k, _ := c.First(); k != nil && len(due) < maxGroup; k, _ = c.Next() {
			if len(k) != 16 {
				continue
			}
			if time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).After(now) {
				break
			}
			id := binary.BigEndian.Uint64(k[8:])
			ml, err := getMail(tx, id)
			if errors.Is(err, ErrNotFound) || err == nil && ml.State != Pending {
				// Stale index entry: remove it so the worker does not spin.
				stale = append(stale, store.Copy(k))
				continue
			}
			if err != nil {
				q.log.Error("read queued mail", "id", id, "err", err)
				return err
			}
			due = append(due, dueMail{key: store.Copy(k), ml: ml, raw: store.Copy(tx.Bucket(bktRaw).Get(store.U64(id)))})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		if err := q.db.Update(func(tx *bolt.Tx) error {
			for _, k := range stale {
				if err := tx.Bucket(bktDue).Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}

	from := q.opts.From
	if a, err := mail.ParseAddress(from); err == nil {
		from = a.Address
	}
	var done []outcome
	var first time.Time
	for _, d := range due {
		at, class, ok := q.send(ctx, from, d)
		if !ok {
			break // shutting down: not the server's fault; try again after restart
		}
		if len(done) == 0 {
			first = time.Now()
		}
		done = append(done, outcome{due: d, at: at, class: class})
		if time.Since(first) >= maxGroupWait {
			if err := q.record(done); err != nil {
				return err
			}
			done = done[:0]
		}
	}
	return q.record(done)
}

// send tries one mail once. ok is false when ctx ended during the send.
// class is the SMTP reply class (ReplyClass).
func (q *Queue) send(ctx context.Context, from string, d dueMail) (_ Attempt, class string, ok bool) {
	sctx, cancel := context.WithTimeout(ctx, q.opts.SendTimeout)
	reply := "250 OK"
	var sendErr error
	if rs, ok := q.opts.Sender.(ReplySender); ok {
		var r string
		if r, sendErr = rs.SendReply(sctx, from, []string{d.ml.To}, d.raw); r != "" {
			reply = r
		}
	} else {
		sendErr = q.opts.Sender.Send(sctx, from, []string{d.ml.To}, d.raw)
	}
	cancel()
	if sendErr != nil && ctx.Err() != nil {
		return Attempt{}, "", false
	}
	at := Attempt{At: q.opts.Now(), OK: sendErr == nil, Reply: reply}
	if sendErr != nil {
		at.Reply = sendErr.Error()
		at.Temporary = Temporary(sendErr)
	}
	return at, ReplyClass(sendErr), true
}

// record writes the outcomes of a group of sends in one transaction.
func (q *Queue) record(done []outcome) error {
	if len(done) == 0 {
		return nil
	}
	recorded := make([]*Mail, len(done))
	err := q.db.Update(func(tx *bolt.Tx) error {
		for i, o := range done {
			recorded[i] = nil
			id, at, now := o.due.ml.ID, o.at, o.at.At
			cur, err := getMail(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue // dropped while it was being sent
			}
			if err != nil {
				return err
			}
			if err := tx.Bucket(bktDue).Delete(o.due.key); err != nil {
				return err
			}
			if err := tx.Bucket(bktDue).Delete(dueKey(cur)); err != nil {
				return err
			}
			old := cur.State
			cur.Attempts = append(cur.Attempts, at)
			switch {
			case at.OK:
				cur.State = Sent
			case at.Temporary && q.budgetLeft(cur, now):
				n := len(cur.Attempts) - cur.RetryBase
				cur.NextAttempt = now.Add(q.backoff(cur.Kind, n))
				if err := tx.Bucket(bktDue).Put(dueKey(cur), nil); err != nil {
					return err
				}
			default:
				cur.State = Failed
			}
			if !at.OK {
				if err := tx.Bucket(bktFail).Put(store.TimeKey(now, store.U64(id)), nil); err != nil {
					return err
				}
			}
			if cur.State != old {
				if err := moveState(tx, id, old, cur.State); err != nil {
					return err
				}
			}
			if err := putMail(tx, cur); err != nil {
				return err
			}
			recorded[i] = cur
		}
		return nil
	})
	if err != nil {
		q.log.Error("record mail attempts", "mails", len(done), "err", err)
		return err
	}
	for i, ml := range recorded {
		if ml == nil {
			continue
		}
		if q.opts.OnSend != nil {
			result := "deferred"
			switch ml.State {
			case Sent:
				result = "sent"
			case Failed:
				result = "failed"
			}
			q.opts.OnSend(result, done[i].class)
		}
		at := done[i].at
		attrs := []any{"id", ml.ID, "kind", ml.Kind, "to", Redact(ml.To), "attempt", len(ml.Attempts)}
		switch ml.State {
		case Sent:
			q.log.Info("mail sent", attrs...)
		case Failed:
			q.log.Warn("mail failed", append(attrs, "reply", at.Reply)...)
		default:
			q.log.Info("mail deferred", append(attrs, "reply", at.Reply, "next_attempt", ml.NextAttempt)...)
		}
	}
	return nil
}

func (q *Queue) budgetLeft(m *Mail, now time.Time) bool {
	if q.opts.MaxAttempts > 0 && len(m.Attempts)-m.RetryBase >= q.opts.MaxAttempts {
		return false
	}
	return now.Sub(m.RetryFrom) < q.opts.GiveUpAfter
}

func (q *Queue) backoff(kind string, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	lo, hi := q.opts.MinBackoff, q.opts.MaxBackoff
	if c, ok := q.opts.KindMaxBackoff[kind]; ok && c > 0 && c < hi {
		lo, hi = min(lo, c), c
	}
	f := float64(lo) * math.Pow(2, float64(n-1))
	if f > float64(hi) {
		return hi
	}
	return time.Duration(f)
}

// prune deletes old failed-attempt index entries and, with Retention, old
// finished mail. It runs at most once an hour.
func (q *Queue) prune() {
	q.pruneMu.Lock()
	now := q.opts.Now()
	if !q.lastPrune.IsZero() && now.Sub(q.lastPrune) < time.Hour && now.After(q.lastPrune) {
		q.pruneMu.Unlock()
		return
	}
	q.lastPrune = now
	q.pruneMu.Unlock()
	err := q.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktFail).Cursor()
		cut := store.TimeKey(now.Add(-48*time.Hour), nil)
		for k, _ := c.First(); k != nil && bytes.Compare(k, cut) < 0; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		if q.opts.Retention <= 0 {
			return nil
		}
		cutoff := now.Add(-q.opts.Retention)
		var old []uint64
		mc := tx.Bucket(bktMail).Cursor()
		for k, v := mc.First(); k != nil; k, v = mc.Next() {
			var m Mail
			if err := json.Unmarshal(v, &m); err != nil {
				continue
			}
			if !m.Created.Before(cutoff) {
				break // ids grow with time
			}
			if m.State != Pending {
				old = append(old, m.ID)
			}
		}
		for _, id := range old {
			if err := deleteMail(tx, id); err != nil {
				return err
			}
		}
		if len(old) > 0 {
			q.log.Info("outbox retention: deleted old mail", "count", len(old))
		}
		return nil
	})
	if err != nil {
		q.log.Error("prune outbox", "err", err)
	}
}

// Get returns one mail with its composed bytes.
func (q *Queue) Get(id uint64) (Mail, error) {
	var m Mail
	err := q.db.View(func(tx *bolt.Tx) error {
		p, err := getMail(tx, id)
		if err != nil {
			return err
		}
		m = *p
		m.Raw = store.Copy(tx.Bucket(bktRaw).Get(store.U64(id)))
		return nil
	})
	return m, err
}

// List returns mail matching f, newest first, without Raw.
func (q *Queue) List(f Filter) ([]Mail, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var out []Mail
	err := q.db.View(func(tx *bolt.Tx) error {
		ids := q.candidates(tx, f)
		skip := f.Offset
		for id := range ids {
			m, err := getMail(tx, id)
			if err != nil {
				continue
			}
			if (f.State != "" && m.State != f.State) || (f.Kind != "" && m.Kind != f.Kind) ||
				(f.Ref != "" && m.Ref != f.Ref) || (f.To != "" && !strings.EqualFold(m.To, f.To)) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			out = append(out, *m)
			if len(out) >= f.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// candidates yields ids, newest first, from the most selective index.
func (q *Queue) candidates(tx *bolt.Tx, f Filter) iter.Seq[uint64] {
	switch {
	case f.Ref != "":
		return store.Descending(tx.Bucket(bktRef), append([]byte(f.Ref), 0))
	case f.To != "":
		return store.Descending(tx.Bucket(bktTo), append([]byte(strings.ToLower(f.To)), 0))
	case f.State != "":
		return store.Descending(tx.Bucket(bktState), append([]byte(f.State), 0))
	}
	return store.Descending(tx.Bucket(bktMail), nil)
}

// ByRef returns every mail queued with ref, newest first.
func (q *Queue) ByRef(ref string) ([]Mail, error) {
	if ref == "" {
		return nil, nil
	}
	return q.List(Filter{Ref: ref, Limit: math.MaxInt})
}

// Retry makes a failed (or pending) mail due now with a fresh retry budget.
func (q *Queue) Retry(id uint64) error {
	err := q.db.Update(func(tx *bolt.Tx) error {
		m, err := getMail(tx, id)
		if err != nil {
			return err
		}
		if m.State == Sent {
			return fmt.Errorf("%w: mail %d was already sent", ErrState, id)
		}
		if m.State == Pending {
			if err := tx.Bucket(bktDue).Delete(dueKey(m)); err != nil {
				return err
			}
		} else if err := moveState(tx, id, m.State, Pending); err != nil {
			return err
		}
		now := q.opts.Now()
		m.State, m.NextAttempt, m.RetryFrom, m.RetryBase = Pending, now, now, len(m.Attempts)
		if err := tx.Bucket(bktDue).Put(dueKey(m), nil); err != nil {
			return err
		}
		return putMail(tx, m)
	})
	if err == nil {
		q.Wake()
	}
	return err
}

// Drop deletes a mail and its history, whatever its state.
func (q *Queue) Drop(id uint64) error {
	return q.db.Update(func(tx *bolt.Tx) error { return deleteMail(tx, id) })
}

// Stats counts mail by state and failed attempts in the last 24 hours.
func (q *Queue) Stats() (Stats, error) {
	var s Stats
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktState).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			switch State(k[:max(0, len(k)-9)]) {
			case Pending:
				s.Pending++
			case Sent:
				s.Sent++
			case Failed:
				s.Failed++
			}
		}
		fc := tx.Bucket(bktFail).Cursor()
		for k, _ := fc.Seek(store.TimeKey(q.opts.Now().Add(-24*time.Hour), nil)); k != nil; k, _ = fc.Next() {
			s.FailedAttempts++
		}
		return nil
	})
	return s, err
}

// DeleteByRecipient deletes every mail to addr (compared lower-cased) with its
// history, for data-protection erasure, and returns how many it deleted.
func (q *Queue) DeleteByRecipient(addr string) (int, error) {
	prefix := append([]byte(strings.ToLower(strings.TrimSpace(addr))), 0)
	n := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		n = 0
		var ids []uint64
		c := tx.Bucket(bktTo).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) == len(prefix)+8 {
				ids = append(ids, binary.BigEndian.Uint64(k[len(prefix):]))
			}
		}
		for _, id := range ids {
			if err := deleteMail(tx, id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// Redact shortens an address for logs: "alice@example.org" -> "a...@e...".
func Redact(addr string) string {
	local, domain, ok := strings.Cut(addr, "@")
	first := func(s string) string {
		for _, r := range s {
			return string(r) + "..."
		}
		return "..."
	}
	if !ok {
		return first(addr)
	}
	return first(local) + "@" + first(domain)
}

func getMail(tx *bolt.Tx, id uint64) (*Mail, error) {
	v := tx.Bucket(bktMail).Get(store.U64(id))
	if v == nil {
		return nil, ErrNotFound
	}
	var m Mail
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("mailer: mail %d: %w", id, err)
	}
	return &m, nil
}

func putMail(tx *bolt.Tx, m *Mail) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bktMail).Put(store.U64(m.ID), v)
}

func deleteMail(tx *bolt.Tx, id uint64) error {
	m, err := getMail(tx, id)
	if err != nil {
		return err
	}
	k := store.U64(id)
	for _, op := range []struct {
		b   []byte
		key []byte
	}{
		{bktMail, k}, {bktRaw, k}, {bktDue, dueKey(m)}, {bktState, stateKey(m.State, id)},
		{bktRef, idxKey(m.Ref, id)}, {bktTo, idxKey(strings.ToLower(m.To), id)},
	} {
		if err := tx.Bucket(op.b).Delete(op.key); err != nil {
			return err
		}
	}
	// Failed-attempt index entries: keyed by time, so look them up by attempt.
	fb := tx.Bucket(bktFail)
	for _, a := range m.Attempts {
		if !a.OK {
			if err := fb.Delete(store.TimeKey(a.At, k)); err != nil {
				return err
			}
		}
	}
	return nil
}

func moveState(tx *bolt.Tx, id uint64, from, to State) error {
	b := tx.Bucket(bktState)
	if err := b.Delete(stateKey(from, id)); err != nil {
		return err
	}
	return b.Put(stateKey(to, id), nil)
}

func dueKey(m *Mail) []byte { return store.TimeKey(m.NextAttempt, store.U64(m.ID)) }

func stateKey(s State, id uint64) []byte { return idxKey(string(s), id) }

func idxKey(s string, id uint64) []byte {
	k := make([]byte, 0, len(s)+9)
	k = append(k, s...)
	k = append(k, 0)
	return append(k, store.U64(id)...)
}
