package store

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Committer groups write transactions without waiting for a timer. bbolt's
// db.Batch collects functions for MaxBatchDelay (10 ms) before it commits, so
// an idle server still waits 10 ms per write. A Committer commits at once
// when no commit is in flight; functions that arrive while one is in flight
// wait for it and then go together in the next transaction (one fsync for
// all of them).
//
// As with db.Batch, a function may run more than once: when one function of
// a group fails, the transaction is rolled back, that function is run again
// alone (its error is its caller's answer) and the others are committed
// without it. Functions must therefore only write what they would write on
// any run (everything random made before the call).
type Committer struct {
	db *bolt.DB
	// MaxGroup bounds the functions in one transaction (default 1000), so
	// one commit never holds the writer for long.
	MaxGroup int

	mu      sync.Mutex
	queue   []*commitCall
	leading bool

	panics atomic.Uint64
}

// Panics is how many transaction functions have panicked (bbolt panics on
// damaged pages); the server then leaves no clean shutdown marker (Close).
func (c *Committer) Panics() uint64 { return c.panics.Load() }

type commitCall struct {
	fn   func(*bolt.Tx) error
	done chan error // the result, or errLead: commit the queue now
	// lingering: DoSoon's caller still waits for another commit to join
	// (guarded by mu); it is not handed the lead.
	lingering bool
}

// errLead tells a waiting caller that the commit in flight ended and it now
// commits the queued group itself.
var errLead = errors.New("store: lead the next commit")

// NewCommitter returns a Committer writing to db.
func NewCommitter(db *bolt.DB) *Committer { return &Committer{db: db, MaxGroup: 1000} }

// DB is the database written to.
func (c *Committer) DB() *bolt.DB { return c.db }

// panicked carries a panic out of a function so that its own caller panics.
type panicked struct{ v any }

func (p panicked) Error() string { return fmt.Sprintf("panic: %v", p.v) }

// Do runs fn inside a write transaction and returns once it is committed (or
// failed). fn may run more than once; see Committer.
func (c *Committer) Do(fn func(*bolt.Tx) error) error {
	call := &commitCall{fn: fn, done: make(chan error, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, call)
	if c.leading {
		c.mu.Unlock()
		if err := <-call.done; err != errLead {
			return unpanic(err)
		}
		c.mu.Lock()
	}
	return c.lead(call)
}

// DoSoon is Do for a write that may wait a little for company: a queue's
// outcomes, which need to be durable soon but not before anything else.
// Instead of committing at once on an idle writer, fn waits up to linger
// for another caller's commit and joins it (one fsync for both); only when
// none begins in that time does it commit alone. On an idle server a
// request that follows a send (the bind after a validation mail, the next
// store-invite after an onbind delivery) then commits the outcome with its
// own write instead of waiting behind a commit of the outcome alone. It
// returns once fn is committed (or failed), like Do.
func (c *Committer) DoSoon(fn func(*bolt.Tx) error, linger time.Duration) error {
	if linger <= 0 {
		return c.Do(fn)
	}
	call := &commitCall{fn: fn, done: make(chan error, 1), lingering: true}
	c.mu.Lock()
	c.queue = append(c.queue, call)
	c.mu.Unlock()
	t := time.NewTimer(linger)
	select {
	case err := <-call.done:
		t.Stop()
		if err != errLead {
			return unpanic(err)
		}
		c.mu.Lock()
		return c.lead(call)
	case <-t.C:
	}
	// Nobody came: commit now, unless a commit already took fn or is in
	// flight (whose end hands the lead to fn, no longer lingering).
	c.mu.Lock()
	call.lingering = false
	if !c.leading && slices.Contains(c.queue, call) {
		return c.lead(call)
	}
	c.mu.Unlock()
	if err := <-call.done; err != errLead {
		return unpanic(err)
	}
	c.mu.Lock()
	return c.lead(call)
}

// lead commits what is queued (call among it, at the front), with c.mu held
// and nothing in flight, then hands the lead to the first queued caller
// that is not lingering, so no caller commits others' work forever. Lingering
// callers left alone lead when their time is up.
func (c *Committer) lead(call *commitCall) error {
	c.leading = true
	if i := slices.Index(c.queue, call); i > 0 {
		// The caller handed the lead may not be first (lingering callers
		// queued before it): its own function goes in this group.
		copy(c.queue[1:i+1], c.queue[:i])
		c.queue[0] = call
	}
	n := len(c.queue)
	if max := c.maxGroup(); n > max {
		n = max
	}
	group := append([]*commitCall(nil), c.queue[:n]...)
	c.queue = append(c.queue[:0:0], c.queue[n:]...)
	c.mu.Unlock()

	c.commit(group)

	c.mu.Lock()
	c.leading = false
	for _, next := range c.queue {
		if !next.lingering {
			c.leading = true
			next.done <- errLead
			break
		}
	}
	c.mu.Unlock()
	return unpanic(<-call.done)
}

func (c *Committer) maxGroup() int {
	if c.MaxGroup <= 0 {
		return 1000
	}
	return c.MaxGroup
}

func unpanic(err error) error {
	if p, ok := err.(panicked); ok {
		panic(p.v)
	}
	return err
}

// commit runs group in one transaction; a function that fails is taken out
// and run alone, and the rest are tried again together.
func (c *Committer) commit(group []*commitCall) {
	for len(group) > 0 {
		failed := -1
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, call := range group {
				if err := c.safeRun(call.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, call := range group {
				call.done <- err
			}
			return
		}
		if len(group) == 1 {
			group[0].done <- err
			return
		}
		solo := group[failed]
		group = append(group[:failed:failed], group[failed+1:]...)
		solo.done <- c.db.Update(func(tx *bolt.Tx) error { return c.safeRun(solo.fn, tx) })
	}
}

func (c *Committer) safeRun(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.panics.Add(1)
			err = panicked{p}
		}
	}()
	return fn(tx)
}
