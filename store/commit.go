package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

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
	// This caller leads: nothing is in flight. It commits what is queued
	// (its own call among them), then hands the lead to the first caller
	// that queued meanwhile, so no caller commits others' work forever.
	c.leading = true
	n := len(c.queue)
	if max := c.maxGroup(); n > max {
		n = max
	}
	group := append([]*commitCall(nil), c.queue[:n]...)
	c.queue = append(c.queue[:0:0], c.queue[n:]...)
	c.mu.Unlock()

	c.commit(group)

	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].done <- errLead
	} else {
		c.leading = false
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
