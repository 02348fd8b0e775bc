// Package queue is Herald's one durable retry queue: the mail outbox and the
// onbind deliveries both run on it, each with its own deliver function and
// its own classification of failures, the way maddy keeps one queue for all
// its delivery targets.
//
// A Queue keeps Records in a Backend. A record carries its state, its next
// attempt, its retry budget, every attempt with the answer it got, the last
// error, a small Meta document its owner reads in lists, and an opaque Data
// payload (what is delivered). The worker claims due records, calls the
// owner's Deliver, and records the outcome: done, retried later with capped
// exponential backoff (or the answer's Retry-After), failed for good, or
// cancelled.
//
// Storage sits behind the Backend interface, whose contract is written down
// as tests once (queuetest.RunConformance). Bolt implements it on Herald's
// bbolt file; a PostgreSQL backend can implement the same contract (claims
// with FOR UPDATE SKIP LOCKED under a lease, so several replicas share one
// queue).
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State of a record.
type State string

const (
	Pending   State = "pending"   // waiting for its next attempt
	Done      State = "done"      // delivered; never attempted again
	Failed    State = "failed"    // refused for good, or retried until its budget ran out
	Cancelled State = "cancelled" // nothing left to deliver, or dropped by an operator
)

// States lists every state, in the order dashboards show them.
var States = []State{Pending, Done, Failed, Cancelled}

// Attempt is one try at delivering, with the answer it got.
type Attempt struct {
	At        time.Time `json:"at"`
	OK        bool      `json:"ok"`
	Temporary bool      `json:"temporary,omitempty"` // failed, worth retrying
	Reply     string    `json:"reply"`               // the answer, or the error
	// Detail is what the owner keeps about the attempt besides the reply
	// (e.g. an HTTP method and status).
	Detail json.RawMessage `json:"detail,omitempty"`
}

// Record is one queued item and its history.
type Record struct {
	ID          uint64    `json:"id"`
	Kind        string    `json:"kind,omitempty"` // selects a per-kind backoff cap
	State       State     `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt"` // meaningful while Pending
	// RetryFrom and RetryBase start the retry budget: at enqueue, and again
	// when an operator retries (RetryBase is how many attempts came before).
	RetryFrom time.Time `json:"retry_from"`
	RetryBase int       `json:"retry_base,omitempty"`
	Finished  time.Time `json:"finished,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	Attempts  []Attempt `json:"attempts"`
	// Meta is the owner's small document (addresses, subject, ids): stored
	// with the record and returned by List.
	Meta json.RawMessage `json:"meta,omitempty"`
	// Data is the owner's payload, stored apart from the record: returned by
	// Get and Claim, not by List. A Queue with TrimDone empties it once the
	// record is done.
	Data []byte `json:"-"`
}

// LastAttempt is the latest attempt, or nil.
func (r *Record) LastAttempt() *Attempt {
	if len(r.Attempts) == 0 {
		return nil
	}
	return &r.Attempts[len(r.Attempts)-1]
}

// Tx is a backend's write transaction: a *store.Tx (or the bare *bbolt.Tx or
// pgx.Tx it wraps); Write hands owners a *store.Tx. Enqueue runs in
// the caller's own transaction, so a record exists if and only if the
// caller's change commits.
type Tx any

// Claimed is a record leased to one worker by Claim. Err is set, and Record
// nil, when the record could not be loaded: the queue backs it off (by
// extending the lease) instead of picking it again at once.
type Claimed struct {
	ID     uint64
	Record *Record
	Err    error
}

// Counts is how many records are in each state, and how many attempts
// failed since the time Stats was asked about.
type Counts struct {
	Pending, Done, Failed, Cancelled int
	FailedAttempts                   int
}

// Page asks List for records newest first: in State (all when empty), with
// an ID below Before (0: from the newest), skipping Offset of them (index
// entries only: skipped records are not read), at most Limit (default 50).
type Page struct {
	State  State
	Before uint64
	Offset int
	Limit  int
}

var (
	// ErrNotFound: no record with that id.
	ErrNotFound = errors.New("queue: no such record")
	// ErrState: the action does not apply to the record's state.
	ErrState = errors.New("queue: not possible in this state")
)

// Backend stores a queue's records. Every method is safe for concurrent use.
// Its contract is queuetest.RunConformance.
type Backend interface {
	// Write runs fn in one write transaction, committed if fn returns nil.
	// fn may run more than once (a retry on PostgreSQL, a group commit on
	// bbolt that one of its other functions failed): it writes only what
	// it would write on any run and does nothing outside the transaction.
	Write(ctx context.Context, fn func(tx Tx) error) error
	// Enqueue stores r as a new record in tx and sets r.ID (increasing with
	// time). The record is due at r.NextAttempt if r.State is Pending.
	Enqueue(tx Tx, r *Record) error
	// Update reads the record in tx, lets fn change it, and stores it with
	// its indexes (state, due time, failed attempts appended by fn, and
	// Data: a nil Data after fn removes the payload). Leases are left as
	// they are. fn's error aborts and is returned. ErrNotFound if there is none.
	Update(tx Tx, id uint64, fn func(r *Record) error) (*Record, error)
	// Delete removes the record, its payload, index entries and lease, and
	// returns what it was.
	Delete(tx Tx, id uint64) (*Record, error)
	// Read reads record id inside the caller's transaction tx (a read or a
	// write transaction of the same database), with its payload if data.
	Read(tx Tx, id uint64, data bool) (*Record, error)
	// Get reads one record with its payload.
	Get(ctx context.Context, id uint64) (*Record, error)
	// Claim leases up to n pending records due at now and not leased, in
	// next-attempt order, until now+lease, and returns them with their
	// payloads. next is when the earliest other pending record becomes
	// claimable (due, or its lease ends), zero if there is none.
	Claim(ctx context.Context, now time.Time, n int, lease time.Duration) (claimed []Claimed, next time.Time, err error)
	// Lease sets the end of the lease on a record (a zero until releases it):
	// a record that could not be loaded is held back this way.
	Lease(id uint64, until time.Time) error
	// List pages through the state index, newest first, decoding only the
	// records it returns (without payloads).
	List(ctx context.Context, p Page) ([]Record, error)
	// Stats counts records by state (from counters, not by walking records)
	// and failed attempts at or after failedSince.
	Stats(ctx context.Context, failedSince time.Time) (Counts, error)
	// Oldest returns the lowest-ID record in state (nil if none).
	Oldest(ctx context.Context, state State) (*Record, error)
	// Finished returns up to limit IDs, oldest first, of records not Pending
	// created before the time given.
	Finished(ctx context.Context, before time.Time, limit int) ([]uint64, error)
	// PruneFailures forgets failed-attempt entries older than before, in a
	// transaction of its own (none when there is nothing to forget).
	PruneFailures(ctx context.Context, before time.Time) error
	// Scan returns up to limit records with an ID above after, in
	// ascending ID order, with their payloads (Copy pages through a whole
	// queue with it).
	Scan(ctx context.Context, after uint64, limit int) ([]Record, error)
	// Import stores r in tx with the ID, state, attempts, times and payload
	// it has (a copy from another backend), with its indexes and counters;
	// later Enqueues get higher IDs. It refuses an ID that exists.
	Import(tx Tx, r *Record) error
}

// MapErr wraps ErrNotFound and ErrState in an owner's own sentinel errors
// (notFound, state), so its callers test for those; other errors pass.
func MapErr(err, notFound, state error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("%w%s", notFound, strings.TrimPrefix(err.Error(), ErrNotFound.Error()))
	case errors.Is(err, ErrState):
		return fmt.Errorf("%w%s", state, strings.TrimPrefix(err.Error(), ErrState.Error()))
	}
	return err
}
