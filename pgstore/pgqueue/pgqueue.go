// Package pgqueue is queue.Backend on PostgreSQL: several Herald replicas
// share one queue, each record attempted by one replica at a time.
//
// All queues live in the tables of migration 0002_queue.sql
// (queue_records, queue_counts, queue_failures), told apart by a queue-name
// column. A replica claims due records with SELECT ... FOR UPDATE SKIP LOCKED
// and sets their lease_until in the same short transaction, so replicas
// claiming at once get disjoint records, and a record whose claimer died is
// claimed again once its lease ends, or at once when the claimer's owner
// lock (pgstore.DB.Owner, written to lease_owner) is gone: the replica died.
// Leases are in the database, not in memory as with queue.Bolt.
//
// Times (now, leases, due times) are the callers': the replicas' clocks must
// agree to well within a lease (NTP does), since one replica's lease end is
// compared with another's now. Columns keep them to the microsecond
// (PostgreSQL rounds); attempts keep theirs exactly, inside their JSON.
//
// A record is attempted by one replica at a time as long as its attempt and
// the recording of its outcome end within the lease (the queue's lease is
// its AttemptTimeout plus a minute). A replica that dies after delivering
// and before recording leaves the record to be attempted again by the next
// claim after its death: the same crash window as on bbolt.
package pgqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// Backend is one named queue in the database.
type Backend struct {
	db   *pgstore.DB
	name string

	foldMu   sync.Mutex
	lastFold time.Time

	reapMu   sync.Mutex
	lastReap time.Time // monotonic: when Claim last looked for dead owners
	// floor is the next_attempt from which Claim's bounded scans look for
	// due records (see claimFloor); zero: from the first.
	floor time.Time

	// localWake is the wake function of this process's worker while it
	// runs (SetLocalWake), else nil.
	localWake atomic.Pointer[func()]

	// released holds records whose lease a committed Update ended with
	// their attempt (they left pending): Lease releasing one of them has
	// nothing left to do and costs no round trip. Bounded by maxReleased.
	releasedMu sync.Mutex
	released   map[uint64]struct{}

	// locked holds the records LockForUpdate read, by transaction of
	// Write, until the Updates that follow take them.
	lockedMu sync.Mutex
	locked   map[*store.Tx]map[uint64]*queue.Record
}

// maxReleased bounds Backend.released: past it the set starts over, and a
// release it forgot is done in the database as before.
const maxReleased = 4096

func (b *Backend) noteReleased(id uint64) {
	b.releasedMu.Lock()
	defer b.releasedMu.Unlock()
	if b.released == nil || len(b.released) >= maxReleased {
		b.released = make(map[uint64]struct{})
	}
	b.released[id] = struct{}{}
}

// takeReleased says whether id's lease is known released, and forgets it
// (Lease and Claim call it: a record leased again is not released).
func (b *Backend) takeReleased(id uint64) bool {
	b.releasedMu.Lock()
	defer b.releasedMu.Unlock()
	_, ok := b.released[id]
	delete(b.released, id)
	return ok
}

// SetLocalWake tells Enqueue that this process runs the queue's worker, woken
// by wake (nil: it stopped). While it is set, an Enqueue in a store.DB write
// transaction wakes that worker after the commit (Tx.OnCommit) instead of
// sending a NOTIFY to every replica: PostgreSQL serializes the commits of
// all transactions that NOTIFY (a global lock held through the WAL flush),
// which halved store-invite's rate on two replicas. Other replicas' workers
// then see the record at their next claim or fallback poll. Enqueues from
// elsewhere (a CLI command, a transaction not of store.DB) still NOTIFY.
func (b *Backend) SetLocalWake(wake func()) {
	if wake == nil {
		b.localWake.Store(nil)
		return
	}
	b.localWake.Store(&wake)
}

var _ queue.Backend = (*Backend)(nil)

// New returns the backend of the queue named name on db (whose migrations
// Open applied).
func New(db *pgstore.DB, name string) (*Backend, error) {
	if db == nil || name == "" {
		return nil, errors.New("pgqueue: a database and a queue name are required")
	}
	return &Backend{db: db, name: name}, nil
}

// opTimeout bounds the calls of the contract that take no context (Lease).
const opTimeout = 10 * time.Second

func (b *Backend) pgTx(tx queue.Tx) (pgx.Tx, error) {
	var t pgx.Tx
	switch v := tx.(type) {
	case *store.Tx:
		t = v.PG
	case pgx.Tx:
		t = v
	}
	if t == nil {
		return nil, fmt.Errorf("pgqueue: needs a pgx.Tx, got %T", tx)
	}
	return t, nil
}

// Write runs fn in one READ COMMITTED transaction through pgstore.InTx; its
// queue.Tx is a *store.Tx on that pgx.Tx, so the caller's own statements
// share it, and its OnCommit functions run after the commit. A
// serialization failure or deadlock (two writers updating the same records
// or counters in different orders) rolls back and runs fn again, so fn may
// run more than once: it must only write through the transaction and do
// nothing outside it (no mail, no HTTP), as with a bbolt Batch. After the
// retries run out the error is pgstore.ErrContention.
func (b *Backend) Write(ctx context.Context, fn func(tx queue.Tx) error) error {
	var t *store.Tx
	err := b.db.InTx(ctx, pgstore.TxOptions{}, func(tx pgx.Tx) error {
		// Hooks, queued writes and locked records of an earlier run are
		// dropped. Writes are queued (store.PGTxQueued): Update's go with
		// the next statement or the commit, so recording a group of
		// outcomes whose records LockForUpdate read takes two round trips.
		b.dropLocked(t)
		t = store.PGTxQueued(ctx, tx)
		if err := fn(t); err != nil {
			return err
		}
		return t.FlushWithCommit()
	})
	b.dropLocked(t)
	if err != nil {
		return err
	}
	t.Committed() // the OnCommit functions fn registered, as on bbolt
	return nil
}

func (b *Backend) Enqueue(tx queue.Tx, r *queue.Record) error {
	t, err := b.pgTx(tx)
	if err != nil {
		return err
	}
	if r.State == "" {
		r.State = queue.Pending
	}
	if r.Attempts == nil {
		r.Attempts = []queue.Attempt{}
	}
	attempts, err := json.Marshal(r.Attempts)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var id int64
	err = t.QueryRow(ctx, `INSERT INTO queue_records
		(queue, kind, state, created, next_attempt, retry_from, retry_base, finished, last_error, attempts, meta, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id`,
		b.name, r.Kind, string(r.State), r.Created, r.NextAttempt, r.RetryFrom, r.RetryBase,
		nullTime(r.Finished), r.LastError, attempts, nullJSON(r.Meta), r.Data).Scan(&id)
	if err != nil {
		return fmt.Errorf("pgqueue %s: enqueue: %w", b.name, err)
	}
	r.ID = uint64(id)
	// The writes after the insert need no answer: in a store.DB write
	// transaction they are queued and go in one round trip with the
	// caller's next statement or the commit (store.Tx.Exec).
	var w pgstore.Execer = t
	if st, ok := tx.(*store.Tx); ok {
		w = queuedExec{st}
	}
	if err := b.failures(ctx, w, r.ID, r.Attempts); err != nil {
		return err
	}
	if err := b.count(ctx, w, "", r.State); err != nil {
		return err
	}
	if r.State != queue.Pending {
		return nil
	}
	if st, ok := tx.(*store.Tx); ok && st.Writable() {
		if wake := b.localWake.Load(); wake != nil {
			st.OnCommit(*wake)
			return nil
		}
	}
	// Sent at commit, once per transaction however many records it
	// enqueued: the replicas' workers listening on the queue's channel
	// (Subscribe) claim at once instead of at their next poll.
	return pgstore.Notify(ctx, w, b.Channel(), "")
}

// queuedExec is a store.Tx's Exec as a pgstore.Execer: the write is queued
// in a store.DB write transaction, run at once elsewhere.
type queuedExec struct{ t *store.Tx }

func (q queuedExec) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, q.t.Exec(sql, args...)
}

// Channel is the NOTIFY channel on which Enqueue signals a new pending
// record: subscribe to it (pgstore.DB.Subscribe) and wake the queue's
// worker on each signal.
func (b *Backend) Channel() string { return Channel(b.name) }

// Import stores r with its own ID (a record copied from bbolt by herald
// migrate-storage), its state, attempts, payload, failed-attempt entries and
// counters, and moves the id sequence past it, so later Enqueues get higher
// IDs. The sequence is moved outside the transaction (sequences are not
// transactional): a rolled-back import leaves a gap, never a reused ID.
func (b *Backend) Import(tx queue.Tx, r *queue.Record) error {
	t, err := b.pgTx(tx)
	if err != nil {
		return err
	}
	if r.ID == 0 || r.ID > 1<<63-1 {
		return fmt.Errorf("pgqueue %s: import: bad id %d", b.name, r.ID)
	}
	if r.Attempts == nil {
		r.Attempts = []queue.Attempt{}
	}
	attempts, err := json.Marshal(r.Attempts)
	if err != nil {
		return err
	}
	// One round trip per record (a copy moves many): the record, its
	// failed attempts, its counter delta and the sequence, pipelined.
	ctx := context.Background()
	var batch pgx.Batch
	batch.Queue(`INSERT INTO queue_records
		(id, queue, kind, state, created, next_attempt, retry_from, retry_base, finished, last_error, attempts, meta, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING`,
		int64(r.ID), b.name, r.Kind, string(r.State), r.Created, r.NextAttempt, r.RetryFrom, r.RetryBase,
		nullTime(r.Finished), r.LastError, attempts, nullJSON(r.Meta), r.Data)
	for _, a := range r.Attempts {
		if !a.OK {
			batch.Queue(`INSERT INTO queue_failures (queue, at, record_id) VALUES ($1, $2, $3)`, b.name, a.At, int64(r.ID))
		}
	}
	batch.Queue(`INSERT INTO queue_count_deltas (queue, state, n) VALUES ($1, $2, 1)`, b.name, string(r.State))
	batch.Queue(`SELECT setval(pg_get_serial_sequence('queue_records', 'id'), $1)
		FROM queue_records_id_seq WHERE NOT is_called OR last_value < $1`, int64(r.ID))
	br := t.SendBatch(ctx, &batch)
	tag, err := br.Exec()
	if err == nil && tag.RowsAffected() == 0 {
		err = fmt.Errorf("record %d exists", r.ID)
	}
	for i := 1; i < batch.Len() && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgqueue %s: import %d: %w", b.name, r.ID, err)
	}
	return nil
}

// Scan pages through the queue in ID order (the primary key's index).
func (b *Backend) Scan(ctx context.Context, after uint64, limit int) ([]queue.Record, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := b.db.Pool().Query(ctx, selectCols+`, data FROM queue_records WHERE queue = $1 AND id > $2
		ORDER BY id LIMIT $3`, b.name, int64(min(after, 1<<63-1)), limit)
	return b.collect(rows, err, true, "scan")
}

// collect reads every row of a query of cols (and data, withData) as
// records; what names the operation in errors.
func (b *Backend) collect(rows pgx.Rows, err error, withData bool, what string) ([]queue.Record, error) {
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: %s: %w", b.name, what, err)
	}
	defer rows.Close()
	var out []queue.Record
	for rows.Next() {
		r, err := scanRecord(rows, withData)
		if err != nil {
			return nil, fmt.Errorf("pgqueue %s: %s: %w", b.name, what, err)
		}
		out = append(out, *r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgqueue %s: %s: %w", b.name, what, err)
	}
	return out, nil
}

func (b *Backend) Update(tx queue.Tx, id uint64, fn func(r *queue.Record) error) (*queue.Record, error) {
	t, err := b.pgTx(tx)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	r := b.takeLocked(tx, id)
	if r == nil {
		// FOR UPDATE: a concurrent Update of the record waits for this
		// one and then reads what it wrote.
		r, err = scanRecord(t.QueryRow(ctx, selectCols+`, data FROM queue_records WHERE queue = $1 AND id = $2 FOR UPDATE`,
			b.name, int64(id)), true)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("%w: %d", queue.ErrNotFound, id)
		}
		if err != nil {
			return nil, fmt.Errorf("pgqueue %s: record %d: %w", b.name, id, err)
		}
	}
	// The writes need no answer: in a transaction that queues (store.DB's
	// write transactions, Write) they go with its next statement or its
	// commit, and an error of theirs comes from there.
	var w pgstore.Execer = t
	if st, ok := tx.(*store.Tx); ok {
		w = queuedExec{st}
	}
	oldState, oldAttempts, oldData := r.State, len(r.Attempts), r.Data
	r.Attempts = r.Attempts[:oldAttempts:oldAttempts]
	if err := fn(r); err != nil {
		return nil, err
	}
	r.ID = id
	if r.Attempts == nil {
		r.Attempts = []queue.Attempt{}
	}
	attempts, err := json.Marshal(r.Attempts)
	if err != nil {
		return nil, err
	}
	// The payload is written only when it changed (or is removed), so a
	// retry does not rewrite a large mail.
	setData := r.Data == nil || string(r.Data) != string(oldData)
	// A record that leaves pending loses its lease with it: no claim can
	// take a record that is not pending, and the worker that attempted it
	// releases it next (Lease), which then needs no statement of its own.
	ended := oldState == queue.Pending && r.State != queue.Pending
	_, err = w.Exec(ctx, `UPDATE queue_records SET kind = $3, state = $4, created = $5, next_attempt = $6,
		retry_from = $7, retry_base = $8, finished = $9, last_error = $10, attempts = $11, meta = $12,
		data = CASE WHEN $13 THEN $14 ELSE data END,
		lease_until = CASE WHEN $15 THEN NULL ELSE lease_until END,
		lease_owner = CASE WHEN $15 THEN NULL ELSE lease_owner END
		WHERE queue = $1 AND id = $2`,
		b.name, int64(id), r.Kind, string(r.State), r.Created, r.NextAttempt, r.RetryFrom, r.RetryBase,
		nullTime(r.Finished), r.LastError, attempts, nullJSON(r.Meta), setData, r.Data, ended)
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: update %d: %w", b.name, id, err)
	}
	if len(r.Attempts) > oldAttempts {
		if err := b.failures(ctx, w, id, r.Attempts[oldAttempts:]); err != nil {
			return nil, err
		}
	}
	if oldState != r.State {
		if err := b.count(ctx, w, oldState, r.State); err != nil {
			return nil, err
		}
	}
	if st, ok := tx.(*store.Tx); ok && ended {
		st.OnCommit(func() { b.noteReleased(id) })
	}
	return r, nil
}

// LockForUpdate reads and locks the records ids (FOR UPDATE, in id order)
// in one statement, for the Updates of them that follow in tx, a
// transaction of Write: each of those then reads nothing itself, and their
// writes all go with the commit. queue.Queue calls it before recording a
// group of outcomes, which took a round trip per record before. A record
// it does not find, or cannot decode, is left to its Update to read (and
// report) as before; the first Update of each record takes its copy.
func (b *Backend) LockForUpdate(tx queue.Tx, ids []uint64) error {
	st, ok := tx.(*store.Tx)
	if !ok || len(ids) < 2 {
		return nil
	}
	arg := make([]int64, len(ids))
	for i, id := range ids {
		arg[i] = int64(id)
	}
	rows, err := st.PG.Query(st.Context(), selectCols+`, data FROM queue_records WHERE queue = $1 AND id = ANY($2)
		ORDER BY id FOR UPDATE`, b.name, arg)
	if err != nil {
		return fmt.Errorf("pgqueue %s: lock records: %w", b.name, err)
	}
	got := make(map[uint64]*queue.Record, len(ids))
	for rows.Next() {
		if r, err := scanRecord(rows, true); err == nil {
			got[r.ID] = r
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pgqueue %s: lock records: %w", b.name, err)
	}
	b.lockedMu.Lock()
	defer b.lockedMu.Unlock()
	if b.locked == nil {
		b.locked = make(map[*store.Tx]map[uint64]*queue.Record)
	}
	b.locked[st] = got
	return nil
}

// takeLocked is record id as LockForUpdate read it in tx, once; nil if it
// did not.
func (b *Backend) takeLocked(tx queue.Tx, id uint64) *queue.Record {
	st, ok := tx.(*store.Tx)
	if !ok {
		return nil
	}
	b.lockedMu.Lock()
	defer b.lockedMu.Unlock()
	r := b.locked[st][id]
	delete(b.locked[st], id)
	return r
}

// dropLocked forgets what LockForUpdate read in t (t's run ended).
func (b *Backend) dropLocked(t *store.Tx) {
	if t == nil {
		return
	}
	b.lockedMu.Lock()
	defer b.lockedMu.Unlock()
	delete(b.locked, t)
}

func (b *Backend) Delete(tx queue.Tx, id uint64) (*queue.Record, error) {
	t, err := b.pgTx(tx)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	// The record's failed-attempt rows go with it (ON DELETE CASCADE), and
	// so does its lease, a column of the row.
	r, err := scanRecord(t.QueryRow(ctx, `DELETE FROM queue_records WHERE queue = $1 AND id = $2 RETURNING `+cols,
		b.name, int64(id)), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", queue.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: delete %d: %w", b.name, id, err)
	}
	return r, b.count(ctx, t, r.State, "")
}

func (b *Backend) Read(tx queue.Tx, id uint64, data bool) (*queue.Record, error) {
	var t pgx.Tx
	var ctx context.Context = context.Background()
	switch v := tx.(type) {
	case *store.Tx:
		t, ctx = v.PG, v.Context()
	case pgx.Tx:
		t = v
	}
	if t == nil {
		return nil, fmt.Errorf("pgqueue: needs a pgx.Tx, got %T", tx)
	}
	q := selectCols + ` FROM queue_records WHERE queue = $1 AND id = $2`
	if data {
		q = selectCols + `, data FROM queue_records WHERE queue = $1 AND id = $2`
	}
	r, err := scanRecord(t.QueryRow(ctx, q, b.name, int64(id)), data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", queue.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: record %d: %w", b.name, id, err)
	}
	return r, nil
}

func (b *Backend) Get(ctx context.Context, id uint64) (*queue.Record, error) {
	r, err := scanRecord(b.db.Pool().QueryRow(ctx, selectCols+`, data FROM queue_records WHERE queue = $1 AND id = $2`,
		b.name, int64(id)), true)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", queue.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: record %d: %w", b.name, id, err)
	}
	return r, nil
}

// claimQuery locks up to $3 claimable records (pending, due at $2, lease
// ended, due at $4 or later: see claimFloor), in next-attempt order,
// skipping rows another transaction holds (a replica claiming or recording
// them). It asks for one more than it will lease, to learn whether more are
// claimable now. READ COMMITTED rechecks the WHERE clause on a row another
// claimer leased and committed after this statement began, so a record is
// never leased twice.
const claimQuery = selectCols + `, data FROM queue_records
	WHERE queue = $1 AND state = 'pending' AND next_attempt <= $2 AND (lease_until IS NULL OR lease_until <= $2)
	  AND next_attempt >= $4
	ORDER BY next_attempt, id
	LIMIT $3
	FOR UPDATE SKIP LOCKED`

// nextQuery is when the earliest pending record not claimable at $2 becomes
// claimable: the first lease to end among due records, or the first due
// time after $2; or $3 (a moment later) if a due record without a lease was
// not claimed, which means another transaction held it (a replica claiming
// it right now: it may lease it, or leave it as the one more it looked at);
// that one looks, like the claim, only at records due at $7 or later; or $5
// (when the reap is next due) if other replicas hold leases on due records.
// The leases are found through queue_records_leased, the due times through
// queue_records_due; the due records not claimed here are the records being
// attempted or claimed, a few per replica. The lease subqueries ask for
// their rows in lease_owner order, which only queue_records_leased gives:
// asked without an order, PostgreSQL's plan made from the statistics of a
// queue at rest (every record done) could as well walk queue_records_due,
// every due record under a backlog, as the reap did (deadOwnersQuery).
const nextQuery = `SELECT least(
	(SELECT min(lease_until) FROM (SELECT lease_until FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND lease_until IS NOT NULL AND next_attempt <= $2 AND lease_until > $2
	  ORDER BY lease_owner) l),
	(SELECT next_attempt FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND next_attempt > $2
	  ORDER BY next_attempt LIMIT 1),
	(SELECT $3::timestamptz WHERE EXISTS (SELECT 1 FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND next_attempt <= $2 AND (lease_until IS NULL OR lease_until <= $2)
	    AND next_attempt >= $7 AND id <> ALL($4))),
	(SELECT $5::timestamptz FROM (SELECT 1 FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND lease_until IS NOT NULL AND lease_owner IS NOT NULL
	    AND lease_owner <> $6 AND next_attempt <= $2 AND lease_until > $2
	  ORDER BY lease_owner LIMIT 1) l))`

// deadOwnersQuery lists the owners, other than $2, that hold leases on the
// queue's pending records and are not alive: they hold no owner lock on the
// database (pgstore.DB.Owner of a replica that died, or lost its database
// connection, with records in flight). It walks queue_records_leased one
// owner at a time (each step the first lease of an owner after the last
// one found, ORDER BY lease_owner LIMIT 1), so it reads an index entry per
// owner however many records are pending or leased. It used to be part of
// one UPDATE filtering the pending records; PostgreSQL's plan for that,
// made from the statistics of a queue at rest (every record done), could
// as well walk queue_records_due, and then read every pending record at
// each reap: 176-192 ms per reap, every 2 s on each replica, under a mail
// backlog of 30,000.
var deadOwnersQuery = `WITH RECURSIVE o(owner) AS (
	(SELECT lease_owner FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND lease_until IS NOT NULL AND lease_owner IS NOT NULL
	  ORDER BY lease_owner LIMIT 1)
	UNION ALL
	SELECT (SELECT lease_owner FROM queue_records
	  WHERE queue = $1 AND state = 'pending' AND lease_until IS NOT NULL AND lease_owner > o.owner
	  ORDER BY lease_owner LIMIT 1)
	FROM o WHERE o.owner IS NOT NULL)
	SELECT owner FROM o WHERE owner IS NOT NULL AND owner <> $2
	  AND owner NOT IN (` + pgstore.LiveOwnersQuery + `)`

// reapQuery ends the leases of the queue's pending records held by the
// owners $2, found dead by deadOwnersQuery, which are claimable at once
// rather than when lease_until comes (a minute or more later). Each owner
// is checked again: an owner is a random number a replica takes when it
// opens the database, so one found dead stays dead, but the check costs
// nothing on this path, which runs only after a replica died. A record
// being claimed or recorded by a live replica at the same moment is waited
// for, then rechecked: its new owner is alive, so it keeps its lease.
var reapQuery = `UPDATE queue_records SET lease_until = NULL, lease_owner = NULL
	WHERE queue = $1 AND state = 'pending' AND lease_until IS NOT NULL AND lease_owner = ANY($2)
	  AND lease_owner NOT IN (` + pgstore.LiveOwnersQuery + `)`

// reapEvery is how often a replica looks for leases of dead replicas while
// due records are leased by other replicas (Claim's next time says to look
// again by then), and so how late a restarted or surviving replica resumes a
// dead one's records at most, beyond its next claim.
const reapEvery = 2 * time.Second

// recheck is how soon Claim says to look again at a record another
// replica's claim held.
const recheck = time.Second

// Claim leases records in a short transaction of its own. Its statements
// only lock rows they can have (SKIP LOCKED), so it waits for no other
// claimer.
func (b *Backend) Claim(ctx context.Context, now time.Time, n int, lease time.Duration) ([]queue.Claimed, time.Time, error) {
	if n <= 0 {
		return nil, time.Time{}, nil
	}
	var out []queue.Claimed
	var next time.Time
	owner := b.db.Owner()
	reap := b.reapDue()
	// The claims that reap look at every due record; the others from the
	// floor the last of those read (claimFloor).
	from := b.claimFloor(now, reap)
	// Through InTx: BEGIN goes with the first statement, and a deadlock
	// (none is known: SKIP LOCKED) would run the claim again.
	var floor time.Time
	err := b.db.InTx(ctx, pgstore.TxOptions{}, func(tx pgx.Tx) error {
		out, next = nil, time.Time{}
		if reap {
			if err := b.reap(ctx, tx, owner); err != nil {
				return err
			}
		}
		if from.Equal(everything) {
			// Read before the claim: a record pending now is due at the
			// floor or later.
			if err := tx.QueryRow(ctx, floorQuery, b.name, now).Scan(&floor); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, claimQuery, b.name, now, n+1, from)
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			r, err := scanRecord(rows, true)
			var id int64
			if err != nil {
				// An undecodable record is still leased, with its error:
				// the queue backs it off rather than picking it at once.
				if id, err = rowID(rows); err != nil {
					rows.Close()
					return err
				}
				err = fmt.Errorf("pgqueue %s: record %d: %w", b.name, id, err)
				out = append(out, queue.Claimed{ID: uint64(id), Err: err})
			} else {
				id = int64(r.ID)
				out = append(out, queue.Claimed{ID: r.ID, Record: r})
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(out) > n {
			// More are claimable now than asked for: the extra one stays
			// unleased (its lock ends with this transaction).
			out, ids, next = out[:n], ids[:n], now
		} else {
			var at *time.Time
			if err := tx.QueryRow(ctx, nextQuery, b.name, now, now.Add(recheck), ids, now.Add(reapEvery), owner, from).Scan(&at); err != nil {
				return err
			}
			if at != nil {
				next = *at
			}
		}
		if len(ids) == 0 {
			return nil
		}
		const leaseQuery = `UPDATE queue_records SET lease_until = $3, lease_owner = $4 WHERE queue = $1 AND id = ANY($2)`
		if bc, ok := tx.(pgstore.BatchCommitter); ok {
			// Sent with COMMIT, in its round trip: the rows are locked
			// (FOR UPDATE) until then, and a failure fails the claim.
			batch := &pgx.Batch{}
			batch.Queue(leaseQuery, b.name, ids, now.Add(lease), owner)
			bc.CommitWith(batch)
			return nil
		}
		_, err = tx.Exec(ctx, leaseQuery, b.name, ids, now.Add(lease), owner)
		return err
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("pgqueue %s: claim: %w", b.name, err)
	}
	for _, c := range out {
		b.takeReleased(c.ID) // leased again: its next release is a real one
	}
	if from.Equal(everything) {
		b.setFloor(floor)
	}
	b.maybeFold(ctx)
	return out, next, nil
}

// reap ends the leases of the owners deadOwnersQuery finds dead, if any,
// in tx (a claim's transaction); owner is this replica's.
func (b *Backend) reap(ctx context.Context, tx pgx.Tx, owner int64) error {
	rows, err := tx.Query(ctx, deadOwnersQuery, b.name, owner)
	if err != nil {
		return err
	}
	dead, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(dead) == 0 {
		return err
	}
	_, err = tx.Exec(ctx, reapQuery, b.name, dead)
	return err
}

// everything is claimFloor's answer for a claim that looks at every due
// record: a time before any next attempt.
var everything = time.Date(1, time.January, 1, 0, 0, 0, 0, time.UTC)

// floorSlack is how far before the floor a bounded claim starts: a record
// enqueued by another replica whose clock is behind by less than this is
// not left below it.
const floorSlack = time.Second

// floorQuery is the floor (claimFloor) at $2: the earliest next attempt of
// the queue's pending records, leased or not, or $2 if that is later. It is
// the first entry of queue_records_due, asked for as such (ORDER BY ...
// LIMIT 1): written as min(next_attempt), PostgreSQL's cached plan for it,
// made while the statistics said the queue was empty, read every pending
// entry instead (886 ms under a backlog of 34,000 mails).
const floorQuery = `SELECT least((SELECT next_attempt FROM queue_records WHERE queue = $1 AND state = 'pending'
	ORDER BY next_attempt LIMIT 1), $2)`

// claimFloor is the next_attempt from which this Claim looks for due
// records. Due records are claimed in next-attempt order, so the front of
// queue_records_due is the entries of records attempted since the last
// VACUUM of queue_records: dead, but walked by every scan from the first
// entry (on a busy queue, 1,300 index pages and 14 ms per claim after a few
// hundred thousand mails, until autovacuum comes). A claim that reaps (the
// first, then one every reapEvery) looks at every due record and sets the
// floor (floorQuery): every record pending then is due at the floor or
// later, and stays so (leases, their end and releases do not move a
// record's next attempt; a retry moves it later). The claims between look
// from the floor, less floorSlack, on; what they pass over is the dead
// entries of the records attempted since the reaping claim, and of those
// still in flight. A record enqueued later is due at its enqueuer's now, at
// the floor or later unless that replica's clock is behind by more than
// floorSlack; then it waits for the next claim that reaps (each replica
// claims what it enqueues, with its own clock, at once). A caller's now
// before the floor (a clock set back) looks at everything.
func (b *Backend) claimFloor(now time.Time, reap bool) time.Time {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	if reap || b.floor.IsZero() || now.Before(b.floor) {
		return everything
	}
	return b.floor.Add(-floorSlack)
}

// setFloor records the floor a claim that looked at everything read.
func (b *Backend) setFloor(floor time.Time) {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	b.floor = floor
}

// reapDue says whether this Claim looks for leases of dead replicas: the
// first one does (a restarted replica resumes what it was doing when it
// died), then at most once per reapEvery.
func (b *Backend) reapDue() bool {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	if !b.lastReap.IsZero() && time.Since(b.lastReap) < reapEvery {
		return false
	}
	b.lastReap = time.Now()
	return true
}

// rowID reads only the id of the current row (when the whole record could
// not be decoded).
func rowID(rows pgx.Rows) (int64, error) {
	vals, err := rows.Values()
	if err != nil {
		return 0, err
	}
	id, ok := vals[0].(int64)
	if !ok {
		return 0, fmt.Errorf("pgqueue: id column is %T", vals[0])
	}
	return id, nil
}

func (b *Backend) Lease(id uint64, until time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if b.takeReleased(id) && until.IsZero() {
		return nil // the committed Update that finished it ended the lease
	}
	var owner *int64 // released: no owner
	if !until.IsZero() {
		o := b.db.Owner()
		owner = &o
	}
	_, err := b.db.Pool().Exec(ctx, `UPDATE queue_records SET lease_until = $3, lease_owner = $4 WHERE queue = $1 AND id = $2`,
		b.name, int64(id), nullTime(until), owner)
	if err != nil {
		return fmt.Errorf("pgqueue %s: lease %d: %w", b.name, id, err)
	}
	return nil
}

func (b *Backend) List(ctx context.Context, p queue.Page) ([]queue.Record, error) {
	if p.Limit <= 0 {
		p.Limit = 50
	}
	q := selectCols + ` FROM queue_records WHERE queue = $1 AND ($2 = '' OR state = $2) AND ($3 = 0 OR id < $3)
		ORDER BY id DESC OFFSET $4 LIMIT $5`
	rows, err := b.db.Pool().Query(ctx, q, b.name, string(p.State), int64(p.Before), max(p.Offset, 0), p.Limit)
	return b.collect(rows, err, false, "list")
}

func (b *Backend) Stats(ctx context.Context, failedSince time.Time) (queue.Counts, error) {
	var s queue.Counts
	// One statement, one snapshot: a fold commits either wholly before it
	// or wholly after.
	rows, err := b.db.Pool().Query(ctx, `SELECT state, sum(n)::bigint FROM (
		SELECT state, n FROM queue_counts WHERE queue = $1
		UNION ALL SELECT state, n FROM queue_count_deltas WHERE queue = $1) c GROUP BY state`, b.name)
	if err != nil {
		return s, fmt.Errorf("pgqueue %s: stats: %w", b.name, err)
	}
	var state string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&state, &n}, func() error {
		switch queue.State(state) {
		case queue.Pending:
			s.Pending = int(n)
		case queue.Done:
			s.Done = int(n)
		case queue.Failed:
			s.Failed = int(n)
		case queue.Cancelled:
			s.Cancelled = int(n)
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("pgqueue %s: stats: %w", b.name, err)
	}
	err = b.db.Pool().QueryRow(ctx, `SELECT count(*) FROM queue_failures WHERE queue = $1 AND at >= $2`,
		b.name, failedSince).Scan(&n)
	if err != nil {
		return s, fmt.Errorf("pgqueue %s: stats: %w", b.name, err)
	}
	s.FailedAttempts = int(n)
	return s, nil
}

func (b *Backend) Oldest(ctx context.Context, state queue.State) (*queue.Record, error) {
	r, err := scanRecord(b.db.Pool().QueryRow(ctx, selectCols+` FROM queue_records WHERE queue = $1 AND state = $2
		ORDER BY id LIMIT 1`, b.name, string(state)), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: oldest: %w", b.name, err)
	}
	return r, nil
}

func (b *Backend) Finished(ctx context.Context, before time.Time, limit int) ([]uint64, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := b.db.Pool().Query(ctx, `SELECT id FROM queue_records WHERE queue = $1 AND state <> 'pending' AND created < $2
		ORDER BY id LIMIT $3`, b.name, before, limit)
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: finished: %w", b.name, err)
	}
	var ids []uint64
	var id int64
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error { ids = append(ids, uint64(id)); return nil })
	if err != nil {
		return nil, fmt.Errorf("pgqueue %s: finished: %w", b.name, err)
	}
	return ids, nil
}

// PruneFailures is one DELETE (its own transaction); with nothing to forget
// it changes nothing. It also folds the counter deltas, so they stay
// bounded on a replica whose worker does not claim for a while.
func (b *Backend) PruneFailures(ctx context.Context, before time.Time) error {
	_, err := b.db.Pool().Exec(ctx, `DELETE FROM queue_failures WHERE queue = $1 AND at < $2`, b.name, before)
	if err != nil {
		return fmt.Errorf("pgqueue %s: prune failures: %w", b.name, err)
	}
	return b.Fold(ctx)
}

// failures records the failed ones among attempts.
func (b *Backend) failures(ctx context.Context, t pgstore.Execer, id uint64, attempts []queue.Attempt) error {
	for _, a := range attempts {
		if a.OK {
			continue
		}
		if _, err := t.Exec(ctx, `INSERT INTO queue_failures (queue, at, record_id) VALUES ($1, $2, $3)`,
			b.name, a.At, int64(id)); err != nil {
			return fmt.Errorf("pgqueue %s: record %d: %w", b.name, id, err)
		}
	}
	return nil
}

// count moves one record from state from to state to in the counters
// (either may be empty: enqueued, deleted), as delta rows in t: inserts
// only, so concurrent writers never wait on each other here.
func (b *Backend) count(ctx context.Context, t pgstore.Execer, from, to queue.State) error {
	var err error
	switch {
	case from == "":
		_, err = t.Exec(ctx, `INSERT INTO queue_count_deltas (queue, state, n) VALUES ($1, $2, 1)`, b.name, string(to))
	case to == "":
		_, err = t.Exec(ctx, `INSERT INTO queue_count_deltas (queue, state, n) VALUES ($1, $2, -1)`, b.name, string(from))
	default:
		_, err = t.Exec(ctx, `INSERT INTO queue_count_deltas (queue, state, n) VALUES ($1, $2, -1), ($1, $3, 1)`,
			b.name, string(from), string(to))
	}
	if err != nil {
		return fmt.Errorf("pgqueue %s: counters: %w", b.name, err)
	}
	return nil
}

// foldEvery is how often a replica's Claim folds the counter deltas, which
// bounds how many Stats has to add up: about that long of state changes.
const foldEvery = 5 * time.Second

// foldQuery moves the queue's deltas into its counters in one statement.
// Two replicas folding at once do not count a delta twice (a row the other
// deleted is skipped) and update the counters in the same order (by state),
// so they wait for each other but never deadlock.
const foldQuery = `WITH d AS (DELETE FROM queue_count_deltas WHERE queue = $1 RETURNING state, n)
	INSERT INTO queue_counts (queue, state, n)
	SELECT $1, state, sum(n) FROM d GROUP BY state ORDER BY state
	ON CONFLICT (queue, state) DO UPDATE SET n = queue_counts.n + excluded.n`

// Fold moves the counter deltas into the counters now. Claim does it every
// foldEvery; Stats is exact without it.
func (b *Backend) Fold(ctx context.Context) error {
	b.foldMu.Lock()
	b.lastFold = time.Now()
	b.foldMu.Unlock()
	if _, err := b.db.Pool().Exec(ctx, foldQuery, b.name); err != nil {
		return fmt.Errorf("pgqueue %s: fold counters: %w", b.name, err)
	}
	return nil
}

// maybeFold folds if this replica has not for foldEvery. A failure is left
// for the next fold: the deltas stay, and Stats counts them.
func (b *Backend) maybeFold(ctx context.Context) {
	b.foldMu.Lock()
	due := time.Since(b.lastFold) >= foldEvery
	b.foldMu.Unlock()
	if due {
		_ = b.Fold(ctx)
	}
}

// cols are the record's columns without the payload, in scanRecord's order.
const cols = `id, kind, state, created, next_attempt, retry_from, retry_base, finished, last_error, attempts, meta`

const selectCols = `SELECT ` + cols

// scanRecord reads cols (and data when withData, as the last column).
func scanRecord(row pgx.Row, withData bool) (*queue.Record, error) {
	var (
		r              queue.Record
		id             int64
		state          string
		finished       *time.Time
		attempts, meta []byte
	)
	dest := []any{&id, &r.Kind, &state, &r.Created, &r.NextAttempt, &r.RetryFrom, &r.RetryBase, &finished,
		&r.LastError, &attempts, &meta}
	if withData {
		dest = append(dest, &r.Data)
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	r.ID, r.State = uint64(id), queue.State(state)
	if finished != nil {
		r.Finished = finished.UTC()
	}
	r.Created, r.NextAttempt, r.RetryFrom = r.Created.UTC(), r.NextAttempt.UTC(), r.RetryFrom.UTC()
	if len(meta) > 0 {
		r.Meta = json.RawMessage(meta)
	}
	if err := json.Unmarshal(attempts, &r.Attempts); err != nil {
		return nil, fmt.Errorf("attempts: %w", err)
	}
	if r.Attempts == nil {
		r.Attempts = []queue.Attempt{}
	}
	return &r, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullJSON(b json.RawMessage) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
