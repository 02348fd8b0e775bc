package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/herald-im/herald/internal/background"
)

// Class is how the owner's Deliver classifies an attempt.
type Class int

const (
	// OK: delivered. The record is Done and never attempted again.
	OK Class = iota
	// Temporary: worth retrying, after the backoff or Outcome.RetryAfter
	// (whichever is longer), until the retry budget runs out.
	Temporary
	// Permanent: refused for good. The record is Failed.
	Permanent
	// Cancel: nothing to deliver any more. The record is Cancelled with
	// Outcome.Reply as its last error, and no attempt is recorded.
	Cancel
	// Abandon: the attempt was cut short (shutdown). Nothing is recorded;
	// the record is attempted again when its lease ends or after a restart.
	Abandon
)

// Outcome is what Deliver answers.
type Outcome struct {
	Class      Class
	Reply      string // the answer, or the error
	Detail     []byte // JSON kept with the attempt (Attempt.Detail)
	RetryAfter time.Duration
	// LastError overrides the record's last error (default: Reply) when
	// the attempt failed.
	LastError string
	// Label is passed to OnRecord (e.g. an SMTP reply class, for metrics).
	Label string
}

// Options configure a Queue.
type Options struct {
	// Name appears in logs ("component").
	Name string
	// Deliver tries one record once. It must stop when ctx ends (answer
	// Abandon then). It may run concurrently, up to Workers at once.
	Deliver func(ctx context.Context, r *Record) Outcome
	// Workers is how many attempts run at once. Default 1.
	Workers int
	// Backoff after the n-th failed attempt since the budget started is
	// MinBackoff·2^(n-1), at most MaxBackoff. Defaults: 30 s and 1 h; a
	// MaxBackoff below MinBackoff caps every wait, the first included.
	MinBackoff, MaxBackoff time.Duration
	// KindMaxBackoff lowers MaxBackoff (and the first wait, when below
	// MinBackoff) for records of a kind.
	KindMaxBackoff map[string]time.Duration
	// MaxRetryAfter caps an answer's RetryAfter. Default 6 h.
	MaxRetryAfter time.Duration
	// A record that keeps failing temporarily becomes Failed after
	// MaxAttempts attempts since its budget started (0: no limit) or when
	// its next attempt would fall GiveUpAfter or more after the budget
	// started (default 48 h).
	MaxAttempts int
	GiveUpAfter time.Duration
	// AttemptTimeout bounds one Deliver. Default 2 min.
	AttemptTimeout time.Duration
	// TrimDone removes a record's Data once it is Done: what was delivered
	// (and any secret it held) leaves the database; the record, its
	// attempts and Meta stay.
	TrimDone bool
	// Retention deletes finished records this long after they were
	// created (0: kept forever). OnDelete is called in the deleting
	// transaction, for the owner's own indexes.
	Retention time.Duration
	OnDelete  func(tx Tx, r *Record) error
	// OnRecord, if set, is told every recorded outcome after its
	// transaction commits, with the record as stored.
	OnRecord func(r *Record, o Outcome)
	Now      func() time.Time
	Log      *slog.Logger
}

// Queue is a durable retry queue over a Backend.
type Queue struct {
	be   Backend
	opts Options
	log  *slog.Logger
	wake chan struct{}

	pruneMu   sync.Mutex
	lastPrune time.Time

	stallMu sync.Mutex
	stalled map[uint64]int  // records that could not be loaded: how many times in a row
	running map[uint64]bool // records whose attempt is under way
}

// New returns a queue over be. Run starts its worker.
func New(be Backend, opts Options) (*Queue, error) {
	if be == nil || opts.Deliver == nil {
		return nil, errors.New("queue: a Backend and Options.Deliver are required")
	}
	if opts.Workers <= 0 {
		opts.Workers = 1
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 30 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Hour
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MinBackoff = opts.MaxBackoff
	}
	if opts.MaxRetryAfter <= 0 {
		opts.MaxRetryAfter = 6 * time.Hour
	}
	if opts.GiveUpAfter <= 0 {
		opts.GiveUpAfter = 48 * time.Hour
	}
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = 2 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Name == "" {
		opts.Name = "queue"
	}
	return &Queue{be: be, opts: opts, log: opts.Log.With("component", opts.Name),
		wake: make(chan struct{}, 1), stalled: map[uint64]int{}, running: map[uint64]bool{}}, nil
}

// Backend is the queue's storage.
func (q *Queue) Backend() Backend { return q.be }

// Enqueue stores r as pending and due now (or at r.NextAttempt, if later)
// inside tx, the caller's write transaction. It sends nothing: call Wake
// after the commit. It only writes (r.ID aside), so it is safe in a bbolt
// Batch function, which may run more than once.
func (q *Queue) Enqueue(tx Tx, r *Record) error {
	now := q.opts.Now()
	r.State, r.Created, r.RetryFrom, r.RetryBase, r.Finished = Pending, now, now, 0, time.Time{}
	if r.NextAttempt.Before(now) {
		r.NextAttempt = now
	}
	r.Attempts = []Attempt{}
	return q.be.Enqueue(tx, r)
}

// Wake tells the worker to look at the queue now. It never blocks.
func (q *Queue) Wake() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// lease is how long a claimed record is held by its attempt: longer than
// an attempt may take, so no other claim picks it while it runs.
func (q *Queue) lease() time.Duration { return q.opts.AttemptTimeout + time.Minute }

type result struct {
	id  uint64
	out Outcome
	at  time.Time
}

// Run is the worker: it attempts due records (up to Workers at once) in
// next-attempt order, records outcomes in groups (each commit takes what
// finished while the previous one was being written), sleeps until the next
// record is due or Wake is called, and returns nil when ctx is done, after
// the attempts under way have stopped and their outcomes are recorded.
// Records pending before a restart are picked up at once.
func (q *Queue) Run(ctx context.Context) error {
	results := make(chan result, q.opts.Workers)
	recorded := make(chan struct{}, 1)
	var wg sync.WaitGroup
	recDone := make(chan struct{})
	go func() {
		defer close(recDone)
		q.recorder(results, recorded)
	}()
	defer func() {
		wg.Wait()
		close(results)
		<-recDone
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	slots := make(chan struct{}, q.opts.Workers)
	freed := make(chan struct{}, 1)
	// Attempts run on Workers long-lived goroutines rather than one new
	// goroutine each: a new goroutine's stack starts small and was grown
	// and copied during nearly every attempt (rendering a mail, an HTTP
	// call), about a tenth of the mail worker's CPU.
	work := make(chan *Record)
	for range q.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				q.attempt(ctx, r, results)
				<-slots
				select { // a free slot: claim the next at once, not after the record
				case freed <- struct{}{}:
				default:
				}
			}
		}()
	}
	defer close(work)
	for {
		if ctx.Err() != nil {
			return nil
		}
		q.prune(ctx)
		wait := time.Hour
		if free := q.opts.Workers - len(slots); free > 0 {
			now := q.opts.Now()
			claimed, next, err := q.be.Claim(ctx, now, free, q.lease())
			if err != nil && ctx.Err() != nil {
				return nil // shutting down: a backend that heeds ctx stopped the claim
			}
			if err != nil {
				q.log.Error("read queue", "err", err)
				next = now.Add(5 * time.Second)
			}
			for _, c := range claimed {
				if c.Err != nil {
					q.stall(c.ID, c.Err)
					q.Wake() // look again for what the stalled record was hiding
					continue
				}
				q.stallMu.Lock()
				busy := q.running[c.ID]
				q.running[c.ID] = true
				q.stallMu.Unlock()
				if busy {
					// Its lease ended while its attempt is still under way
					// or being recorded (a clock moved on): one attempt at
					// a time.
					continue
				}
				slots <- struct{}{}
				work <- c.Record
			}
			if !next.IsZero() {
				wait = min(max(next.Sub(now), time.Millisecond), time.Hour)
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-q.wake:
		case <-recorded:
		case <-freed:
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

// attempt runs Deliver for r and hands its outcome to the recorder.
func (q *Queue) attempt(ctx context.Context, r *Record, results chan<- result) {
	// A panic in Deliver counts as a temporary failure: the record backs
	// off instead of being picked again at once.
	out := Outcome{Class: Temporary, Reply: "internal error while attempting (see the log)"}
	func() {
		defer background.Recover(q.log, q.opts.Name+" attempt")
		actx, cancel := context.WithTimeout(ctx, q.opts.AttemptTimeout)
		defer cancel()
		out = q.opts.Deliver(actx, r)
	}()
	if out.Class != Abandon && ctx.Err() != nil && out.Class == Temporary {
		out.Class = Abandon // cut short by shutdown: not the far end's fault
	}
	results <- result{id: r.ID, out: out, at: q.opts.Now()}
}

// done marks the attempt on id over and ends its lease (unless held back).
func (q *Queue) done(id uint64, release bool) {
	q.stallMu.Lock()
	delete(q.running, id)
	q.stallMu.Unlock()
	if release {
		q.be.Lease(id, time.Time{})
	}
}

// recorder writes outcomes: one transaction for each group of outcomes
// that arrived while the previous group was being committed.
func (q *Queue) recorder(results <-chan result, recorded chan<- struct{}) {
	for first := range results {
		group := []result{first}
	more:
		for len(group) < 256 {
			select {
			case r, ok := <-results:
				if !ok {
					break more
				}
				group = append(group, r)
			default:
				break more
			}
		}
		q.record(group)
		select {
		case recorded <- struct{}{}:
		default:
		}
	}
}

func (q *Queue) record(group []result) {
	var write []result
	for _, r := range group {
		if r.out.Class == Abandon {
			q.done(r.id, true) // claimable again at once (after a restart, anyway)
			continue
		}
		write = append(write, r)
	}
	if len(write) == 0 {
		return
	}
	stored := make([]*Record, len(write))
	writeFn := q.be.Write
	if w, ok := q.be.(soonWriter); ok {
		writeFn = w.WriteSoon
	}
	err := writeFn(context.Background(), func(tx Tx) error {
		if l, ok := q.be.(groupLocker); ok && len(write) > 1 {
			ids := make([]uint64, len(write))
			for i, res := range write {
				ids[i] = res.id
			}
			if err := l.LockForUpdate(tx, ids); err != nil {
				return err
			}
		}
		for i, res := range write {
			stored[i] = nil
			rec, err := q.be.Update(tx, res.id, func(r *Record) error {
				if r.State != Pending {
					return errSkip // finished or dropped while it was attempted
				}
				q.apply(r, res)
				return nil
			})
			if errors.Is(err, errSkip) || errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			stored[i] = rec
		}
		return nil
	})
	if err != nil {
		q.log.Error("record attempts", "records", len(write), "err", err)
		// Not recorded: held back like a record that cannot be loaded,
		// rather than attempted again at once.
		for _, res := range write {
			q.stall(res.id, err)
			q.done(res.id, false)
		}
		return
	}
	for i, r := range stored {
		q.done(write[i].id, true)
		if r == nil {
			continue
		}
		if q.opts.OnRecord != nil {
			q.opts.OnRecord(r, write[i].out)
		}
	}
}

var errSkip = errors.New("queue: skip")

// groupLocker is a Backend that reads the records of a group of outcomes in
// one statement before their Updates (pgqueue: one round trip instead of
// one per record).
type groupLocker interface {
	LockForUpdate(tx Tx, ids []uint64) error
}

// soonWriter is a Backend that can write outcomes a little later, joining
// another commit (Bolt through the group committer): they must be durable
// before the record can be attempted again, not before anything else.
type soonWriter interface {
	WriteSoon(ctx context.Context, fn func(tx Tx) error) error
}

// apply changes pending record r by the outcome of its attempt.
func (q *Queue) apply(r *Record, res result) {
	o, now := res.out, res.at
	q.stallMu.Lock()
	delete(q.stalled, r.ID)
	q.stallMu.Unlock()
	if o.Class == Cancel {
		r.State, r.Finished, r.LastError = Cancelled, now, o.Reply
		return
	}
	a := Attempt{At: now, OK: o.Class == OK, Temporary: o.Class == Temporary, Reply: o.Reply, Detail: o.Detail}
	r.Attempts = append(r.Attempts, a)
	lastErr := o.LastError
	if lastErr == "" {
		lastErr = o.Reply
	}
	switch o.Class {
	case OK:
		r.State, r.Finished, r.LastError = Done, now, ""
		if q.opts.TrimDone {
			r.Data = nil
		}
	case Permanent:
		r.State, r.Finished, r.LastError = Failed, now, lastErr
	default:
		r.LastError = lastErr
		n := len(r.Attempts) - r.RetryBase
		wait := max(q.Backoff(r.Kind, n), min(o.RetryAfter, q.opts.MaxRetryAfter))
		if (q.opts.MaxAttempts > 0 && n >= q.opts.MaxAttempts) || !now.Add(wait).Before(r.RetryFrom.Add(q.opts.GiveUpAfter)) {
			r.State, r.Finished = Failed, now
			r.LastError = "gave up after " + q.opts.GiveUpAfter.String() + ": " + lastErr
			return
		}
		r.NextAttempt = now.Add(wait)
	}
}

// Backoff is the wait after the n-th failed attempt of a record of kind:
// MinBackoff·2^(n-1), at most MaxBackoff or the kind's cap.
func (q *Queue) Backoff(kind string, n int) time.Duration {
	n = max(n, 1)
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

// stall holds back a record that could not be loaded or recorded, with the
// backoff of a failed attempt: without it the worker would pick it again at
// once, in a hot loop. The count lives in memory: after a restart the record
// is tried once more, then backs off again.
func (q *Queue) stall(id uint64, cause error) {
	q.stallMu.Lock()
	q.stalled[id]++
	n := q.stalled[id]
	q.stallMu.Unlock()
	wait := q.Backoff("", n)
	q.be.Lease(id, q.opts.Now().Add(wait))
	q.log.Error("queued record cannot be attempted; held back", "id", id, "err", cause, "retry_in", wait)
}

// prune forgets failed-attempt entries older than 48 hours and, with
// Retention, deletes old finished records in bounded batches. It runs at
// most once an hour.
func (q *Queue) prune(ctx context.Context) {
	q.pruneMu.Lock()
	now := q.opts.Now()
	if !q.lastPrune.IsZero() && now.Sub(q.lastPrune) < time.Hour && now.After(q.lastPrune) {
		q.pruneMu.Unlock()
		return
	}
	q.lastPrune = now
	q.pruneMu.Unlock()
	if err := q.be.PruneFailures(ctx, now.Add(-48*time.Hour)); err != nil && ctx.Err() == nil {
		q.log.Error("prune failed-attempt index", "err", err)
	}
	if q.opts.Retention <= 0 {
		return
	}
	total := 0
	for ctx.Err() == nil {
		ids, err := q.be.Finished(ctx, now.Add(-q.opts.Retention), 500)
		if err == nil && len(ids) > 0 {
			err = q.be.Write(ctx, func(tx Tx) error { return q.deleteGone(tx, ids...) })
		}
		if err != nil {
			if ctx.Err() == nil { // not shutting down
				q.log.Error("retention", "err", err)
			}
			return
		}
		total += len(ids)
		if len(ids) < 500 {
			break
		}
	}
	if total > 0 {
		q.log.Info("retention: deleted old records", "count", total)
	}
}

// deleteGone is deleteTx for retention, which skips records already gone:
// on a shared backend another replica's retention may delete the same old
// records first.
func (q *Queue) deleteGone(tx Tx, ids ...uint64) error {
	for _, id := range ids {
		err := q.deleteTx(tx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

func (q *Queue) deleteTx(tx Tx, ids ...uint64) error {
	for _, id := range ids {
		r, err := q.be.Delete(tx, id)
		if err != nil {
			return err
		}
		if q.opts.OnDelete != nil {
			if err := q.opts.OnDelete(tx, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// Get returns one record with its payload.
func (q *Queue) Get(ctx context.Context, id uint64) (*Record, error) { return q.be.Get(ctx, id) }

// List pages through records newest first (see Page).
func (q *Queue) List(ctx context.Context, p Page) ([]Record, error) { return q.be.List(ctx, p) }

// Stats counts records by state and failed attempts in the last 24 hours.
func (q *Queue) Stats(ctx context.Context) (Counts, error) {
	return q.be.Stats(ctx, q.opts.Now().Add(-24*time.Hour))
}

// Backlog is how many records are pending and when the oldest of them
// started waiting (its retry budget's start).
func (q *Queue) Backlog(ctx context.Context) (int, time.Time, error) {
	s, err := q.be.Stats(ctx, q.opts.Now())
	if err != nil || s.Pending == 0 {
		return 0, time.Time{}, err
	}
	r, err := q.be.Oldest(ctx, Pending)
	if err != nil || r == nil {
		return s.Pending, time.Time{}, err
	}
	return s.Pending, r.RetryFrom, nil
}

// Retry makes failed, cancelled or pending records due now with a fresh
// retry budget. A Done record is ErrState: nothing is sent again after a
// recorded success.
func (q *Queue) Retry(ctx context.Context, ids ...uint64) error {
	err := q.be.Write(ctx, func(tx Tx) error {
		for _, id := range ids {
			_, err := q.be.Update(tx, id, func(r *Record) error {
				if r.State == Done {
					return fmt.Errorf("%w: %d was already delivered", ErrState, id)
				}
				now := q.opts.Now()
				r.State, r.NextAttempt, r.RetryFrom, r.RetryBase, r.Finished = Pending, now, now, len(r.Attempts), time.Time{}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		q.stallMu.Lock()
		for _, id := range ids {
			delete(q.stalled, id) // the operator asked for an attempt now
			if !q.running[id] {
				q.be.Lease(id, time.Time{})
			}
		}
		q.stallMu.Unlock()
		q.Wake()
	}
	return err
}

// Drop cancels pending or failed records: they are not attempted again
// unless retried. Their history is kept.
func (q *Queue) Drop(ctx context.Context, reason string, ids ...uint64) error {
	return q.be.Write(ctx, func(tx Tx) error {
		for _, id := range ids {
			_, err := q.be.Update(tx, id, func(r *Record) error {
				if r.State == Done || r.State == Cancelled {
					return fmt.Errorf("%w: %d is %s", ErrState, id, r.State)
				}
				r.State, r.Finished, r.LastError = Cancelled, q.opts.Now(), reason
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete removes records with their history, whatever their state, in one
// transaction (OnDelete runs for each).
func (q *Queue) Delete(ctx context.Context, ids ...uint64) error {
	return q.be.Write(ctx, func(tx Tx) error { return q.deleteTx(tx, ids...) })
}

// DeleteTx is Delete inside the caller's write transaction.
func (q *Queue) DeleteTx(tx Tx, ids ...uint64) error { return q.deleteTx(tx, ids...) }
