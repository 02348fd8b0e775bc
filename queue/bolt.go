package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// Bolt is the Backend on Herald's bbolt file. A queue named n keeps:
//
//	n:        id -> Record without Data (boltrec.go: compact JSON)
//	n_data:   id -> payload
//	n_due:    next attempt (unix ns) + id -> nil, pending records only
//	n_state:  state 0 id -> nil
//	n_fail:   attempt time (unix ns) + id -> nil, one per failed attempt
//	n_count:  state -> count (big-endian), kept in the transactions that move records
//
// Keys are big-endian, so cursors walk them in order (Seek, never a scan of
// every record). Leases live in memory: bbolt's file lock lets one process
// at a time own the queue.
type Bolt struct {
	db                                   *bolt.DB
	bRec, bData, bDue, bState, bFail, bN []byte

	mu     sync.Mutex
	leases map[uint64]time.Time

	// commit, when set, runs Write's transactions through the database's
	// group committer (CommitThrough).
	commit *store.Committer
}

// CommitThrough makes Write commit through c, the Committer of the same
// database: the worker's outcomes then share a transaction, and its fsync,
// with the writes in flight at the same moment (store-invite's above all)
// instead of taking bbolt's only writer for a commit of their own. It
// returns b.
func (b *Bolt) CommitThrough(c *store.Committer) *Bolt {
	if c != nil && c.DB() == b.db {
		b.commit = c
	}
	return b
}

// OpenBolt creates the queue's buckets in db (if missing) and returns its backend.
func OpenBolt(db *bolt.DB, name string) (*Bolt, error) {
	b := &Bolt{db: db, bRec: []byte(name), bData: []byte(name + "_data"), bDue: []byte(name + "_due"),
		bState: []byte(name + "_state"), bFail: []byte(name + "_fail"), bN: []byte(name + "_count"),
		leases: map[uint64]time.Time{}}
	if err := store.Buckets(db, b.bRec, b.bData, b.bDue, b.bState, b.bFail, b.bN); err != nil {
		return nil, err
	}
	return b, nil
}

// Buckets names the queue's buckets (for backups and checks).
func (b *Bolt) Buckets() [][]byte { return [][]byte{b.bRec, b.bData, b.bDue, b.bState, b.bFail, b.bN} }

func (b *Bolt) boltTx(tx Tx) (*bolt.Tx, error) {
	var t *bolt.Tx
	switch v := tx.(type) {
	case *store.Tx:
		t = v.Bolt
	case *bolt.Tx:
		t = v
	}
	if t == nil || !t.Writable() {
		return nil, fmt.Errorf("queue: Bolt needs a writable *bbolt.Tx, got %T", tx)
	}
	if t.Bucket(b.bRec) == nil {
		return nil, fmt.Errorf("queue: bucket %s missing (was the queue opened on this database?)", b.bRec)
	}
	return t, nil
}

func (b *Bolt) Read(tx Tx, id uint64, data bool) (*Record, error) {
	var t *bolt.Tx
	switch v := tx.(type) {
	case *store.Tx:
		t = v.Bolt
	case *bolt.Tx:
		t = v
	}
	if t == nil {
		return nil, fmt.Errorf("queue: Bolt needs a *bbolt.Tx, got %T", tx)
	}
	if t.Bucket(b.bRec) == nil {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	return b.get(t, id, data)
}

// outcomeLinger is how long a group of outcomes written through the group
// committer waits for another commit to join (store.Committer.DoSoon). It
// widens the crash window in which a sent mail or a delivered onbind is
// not yet recorded (and is attempted again after a restart) by at most
// this much; in return, on a quiet server, the request that follows a send
// carries its outcome in the same fsync.
const outcomeLinger = 10 * time.Millisecond

// WriteSoon is Write for attempt outcomes: through the group committer
// (CommitThrough), it joins another commit within outcomeLinger rather than
// taking the writer at once.
func (b *Bolt) WriteSoon(ctx context.Context, fn func(tx Tx) error) error {
	if b.commit == nil {
		return b.Write(ctx, fn)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.commit.DoSoon(func(tx *bolt.Tx) error { return fn(store.BoltTx(tx)) }, outcomeLinger)
}

var _ soonWriter = (*Bolt)(nil)

func (b *Bolt) Write(ctx context.Context, fn func(tx Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.commit != nil {
		return b.commit.Do(func(tx *bolt.Tx) error { return fn(store.BoltTx(tx)) })
	}
	return b.db.Update(func(tx *bolt.Tx) error { return fn(store.BoltTx(tx)) })
}

func (b *Bolt) Enqueue(tx Tx, r *Record) error {
	t, err := b.boltTx(tx)
	if err != nil {
		return err
	}
	if r.State == "" {
		r.State = Pending
	}
	if r.Attempts == nil {
		r.Attempts = []Attempt{}
	}
	id, err := t.Bucket(b.bRec).NextSequence()
	if err != nil {
		return err
	}
	r.ID = id
	if err := b.put(t, r); err != nil {
		return err
	}
	if r.Data != nil {
		if err := t.Bucket(b.bData).Put(store.U64(id), r.Data); err != nil {
			return err
		}
	}
	if err := b.index(t, r, true); err != nil {
		return err
	}
	return b.count(t, r.State, 1)
}

func (b *Bolt) Update(tx Tx, id uint64, fn func(r *Record) error) (*Record, error) {
	t, err := b.boltTx(tx)
	if err != nil {
		return nil, err
	}
	r, err := b.get(t, id, true)
	if err != nil {
		return nil, err
	}
	old := *r
	old.Attempts = r.Attempts[:len(r.Attempts):len(r.Attempts)]
	if err := fn(r); err != nil {
		return nil, err
	}
	r.ID = id
	if err := b.index(t, &old, false); err != nil {
		return nil, err
	}
	if err := b.index(t, r, true); err != nil {
		return nil, err
	}
	for _, a := range r.Attempts[min(len(old.Attempts), len(r.Attempts)):] {
		if !a.OK {
			if err := t.Bucket(b.bFail).Put(store.TimeKey(a.At, store.U64(id)), nil); err != nil {
				return nil, err
			}
		}
	}
	if old.State != r.State {
		if err := b.count(t, old.State, -1); err != nil {
			return nil, err
		}
		if err := b.count(t, r.State, 1); err != nil {
			return nil, err
		}
	}
	if r.Data == nil {
		if err := t.Bucket(b.bData).Delete(store.U64(id)); err != nil {
			return nil, err
		}
	} else if !bytes.Equal(r.Data, old.Data) {
		if err := t.Bucket(b.bData).Put(store.U64(id), r.Data); err != nil {
			return nil, err
		}
	}
	if err := b.put(t, r); err != nil {
		return nil, err
	}
	return r, nil
}

func (b *Bolt) Delete(tx Tx, id uint64) (*Record, error) {
	t, err := b.boltTx(tx)
	if err != nil {
		return nil, err
	}
	r, err := b.get(t, id, false)
	if err != nil {
		return nil, err
	}
	k := store.U64(id)
	if err := b.index(t, r, false); err != nil {
		return nil, err
	}
	fb := t.Bucket(b.bFail)
	for _, a := range r.Attempts {
		if !a.OK {
			if err := fb.Delete(store.TimeKey(a.At, k)); err != nil {
				return nil, err
			}
		}
	}
	if err := t.Bucket(b.bRec).Delete(k); err != nil {
		return nil, err
	}
	if err := t.Bucket(b.bData).Delete(k); err != nil {
		return nil, err
	}
	if err := b.count(t, r.State, -1); err != nil {
		return nil, err
	}
	t.OnCommit(func() { b.Lease(id, time.Time{}) })
	return r, nil
}

func (b *Bolt) Get(ctx context.Context, id uint64) (*Record, error) {
	var r *Record
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = b.get(tx, id, true)
		return err
	})
	return r, err
}

func (b *Bolt) Claim(ctx context.Context, now time.Time, n int, lease time.Duration) ([]Claimed, time.Time, error) {
	var out []Claimed
	var next time.Time
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(b.bDue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) != 16 {
				continue
			}
			at := time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
			if at.After(now) {
				later(at)
				return nil
			}
			id := binary.BigEndian.Uint64(k[8:])
			if until, ok := b.leases[id]; ok && until.After(now) {
				later(until)
				continue
			}
			if len(out) >= n {
				later(now)
				return nil
			}
			r, err := b.get(tx, id, true)
			if err == nil && r.State != Pending {
				err = fmt.Errorf("queue: due entry of a record that is %s", r.State)
			}
			if err != nil {
				out = append(out, Claimed{ID: id, Err: err})
			} else {
				out = append(out, Claimed{ID: id, Record: r})
			}
		}
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	for _, c := range out {
		b.leases[c.ID] = now.Add(lease)
	}
	return out, next, nil
}

func (b *Bolt) Lease(id uint64, until time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.IsZero() {
		delete(b.leases, id)
	} else {
		b.leases[id] = until
	}
	return nil
}

func (b *Bolt) List(ctx context.Context, p Page) ([]Record, error) {
	if p.Limit <= 0 {
		p.Limit = 50
	}
	var out []Record
	err := b.db.View(func(tx *bolt.Tx) error {
		bk, prefix := tx.Bucket(b.bRec), []byte(nil)
		if p.State != "" {
			bk, prefix = tx.Bucket(b.bState), append([]byte(p.State), 0)
		}
		ids := store.DescendingBefore(bk, prefix, p.Before)
		skip := p.Offset
		for id := range ids {
			if skip > 0 {
				skip--
				continue
			}
			r, err := b.get(tx, id, false)
			if err != nil {
				return err
			}
			out = append(out, *r)
			if len(out) >= p.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

func (b *Bolt) Stats(ctx context.Context, failedSince time.Time) (Counts, error) {
	var s Counts
	err := b.db.View(func(tx *bolt.Tx) error {
		n := tx.Bucket(b.bN)
		get := func(st State) int {
			if v := n.Get([]byte(st)); len(v) == 8 {
				return int(binary.BigEndian.Uint64(v))
			}
			return 0
		}
		s.Pending, s.Done, s.Failed, s.Cancelled = get(Pending), get(Done), get(Failed), get(Cancelled)
		fc := tx.Bucket(b.bFail).Cursor()
		for k, _ := fc.Seek(store.TimeKey(failedSince, nil)); k != nil; k, _ = fc.Next() {
			s.FailedAttempts++
		}
		return nil
	})
	return s, err
}

func (b *Bolt) Oldest(ctx context.Context, state State) (*Record, error) {
	var r *Record
	err := b.db.View(func(tx *bolt.Tx) error {
		prefix := append([]byte(state), 0)
		c := tx.Bucket(b.bState).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) != len(prefix)+8 {
				continue
			}
			got, err := b.get(tx, binary.BigEndian.Uint64(k[len(prefix):]), false)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			r = got
			return err
		}
		return nil
	})
	return r, err
}

func (b *Bolt) Finished(ctx context.Context, before time.Time, limit int) ([]uint64, error) {
	var ids []uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		for _, st := range []State{Done, Failed, Cancelled} {
			prefix := append([]byte(st), 0)
			c := tx.Bucket(b.bState).Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(ids) < limit; k, _ = c.Next() {
				if len(k) != len(prefix)+8 {
					continue
				}
				id := binary.BigEndian.Uint64(k[len(prefix):])
				r, err := b.get(tx, id, false)
				if err != nil {
					continue // left for Get to report; pruning skips it
				}
				if !r.Created.Before(before) {
					break // IDs grow with time
				}
				ids = append(ids, id)
			}
		}
		return nil
	})
	if len(ids) > limit {
		ids = ids[:limit]
	}
	return ids, err
}

func (b *Bolt) PruneFailures(ctx context.Context, before time.Time) error {
	cut := store.TimeKey(before, nil)
	stale := false
	// A read first: most hours there is nothing to forget, and a write
	// would take bbolt's only writer (and an fsync) for nothing.
	if err := b.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(b.bFail).Cursor().First()
		stale = k != nil && bytes.Compare(k, cut) < 0
		return nil
	}); err != nil || !stale {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(b.bFail).Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, cut) < 0; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *Bolt) get(tx *bolt.Tx, id uint64, data bool) (*Record, error) {
	v := tx.Bucket(b.bRec).Get(store.U64(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	r := new(Record)
	if err := decodeRecord(id, v, r); err != nil {
		return nil, fmt.Errorf("queue %s: record %d: %w", b.bRec, id, err)
	}
	if data {
		r.Data = store.Copy(tx.Bucket(b.bData).Get(store.U64(id)))
	}
	return r, nil
}

func (b *Bolt) put(tx *bolt.Tx, r *Record) error {
	v, err := encodeRecord(r)
	if err != nil {
		return err
	}
	return tx.Bucket(b.bRec).Put(store.U64(r.ID), v)
}

// index adds (or removes) r's state and due entries.
func (b *Bolt) index(tx *bolt.Tx, r *Record, add bool) error {
	op := func(bk []byte, k []byte) error {
		if add {
			return tx.Bucket(bk).Put(k, nil)
		}
		return tx.Bucket(bk).Delete(k)
	}
	if err := op(b.bState, stateKey(r.State, r.ID)); err != nil {
		return err
	}
	if r.State == Pending {
		return op(b.bDue, store.TimeKey(r.NextAttempt, store.U64(r.ID)))
	}
	return nil
}

func (b *Bolt) count(tx *bolt.Tx, st State, delta int) error {
	n := tx.Bucket(b.bN)
	var v uint64
	if raw := n.Get([]byte(st)); len(raw) == 8 {
		v = binary.BigEndian.Uint64(raw)
	}
	if delta < 0 && v < uint64(-delta) {
		v = 0
	} else {
		v = uint64(int64(v) + int64(delta))
	}
	return n.Put([]byte(st), store.U64(v))
}

func stateKey(s State, id uint64) []byte {
	k := make([]byte, 0, len(s)+9)
	k = append(k, s...)
	k = append(k, 0)
	return append(k, store.U64(id)...)
}

// GetTx reads one record with its payload inside tx, a transaction of the
// caller's on the same file (a read inside the caller's own transaction,
// where Get would open another).
func (b *Bolt) GetTx(tx *bolt.Tx, id uint64) (*Record, error) { return b.get(tx, id, true) }

// ReadBolt reads record id (without its payload) of the queue named name
// inside tx, for code that holds a transaction on the file but not the
// queue's Bolt (ErrNotFound when the queue or the record does not exist).
func ReadBolt(tx *bolt.Tx, name string, id uint64) (*Record, error) {
	if tx.Bucket([]byte(name)) == nil {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	b := &Bolt{bRec: []byte(name), bData: []byte(name + "_data")}
	return b.get(tx, id, false)
}

// Import stores r with the ID it already has (from an older layout being
// converted, or another backend being copied), with its payload, indexes and
// counters, inside tx (a *store.Tx or a *bbolt.Tx); later Enqueues get
// higher IDs.
func (b *Bolt) Import(tx Tx, r *Record) error {
	t, err := b.boltTx(tx)
	if err != nil {
		return err
	}
	if r.ID == 0 {
		return errors.New("queue: Import needs the record's ID")
	}
	if r.Attempts == nil {
		r.Attempts = []Attempt{}
	}
	rec := t.Bucket(b.bRec)
	if rec.Get(store.U64(r.ID)) != nil {
		return fmt.Errorf("queue: Import: record %d exists", r.ID)
	}
	if rec.Sequence() < r.ID {
		if err := rec.SetSequence(r.ID); err != nil {
			return err
		}
	}
	if err := b.put(t, r); err != nil {
		return err
	}
	if r.Data != nil {
		if err := t.Bucket(b.bData).Put(store.U64(r.ID), r.Data); err != nil {
			return err
		}
	}
	for _, a := range r.Attempts {
		if !a.OK {
			if err := t.Bucket(b.bFail).Put(store.TimeKey(a.At, store.U64(r.ID)), nil); err != nil {
				return err
			}
		}
	}
	if err := b.index(t, r, true); err != nil {
		return err
	}
	return b.count(t, r.State, 1)
}

// Scan returns up to limit records with an ID above after, ascending, with
// their payloads, from one read transaction.
func (b *Bolt) Scan(ctx context.Context, after uint64, limit int) ([]Record, error) {
	var out []Record
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(b.bRec).Cursor()
		for k, v := c.Seek(store.U64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			id := binary.BigEndian.Uint64(k)
			var r Record
			if err := decodeRecord(id, v, &r); err != nil {
				return fmt.Errorf("queue %s: record %d: %w", b.bRec, id, err)
			}
			r.Data = store.Copy(tx.Bucket(b.bData).Get(k))
			out = append(out, r)
		}
		return ctx.Err()
	})
	return out, err
}

// Convert moves the records of an older layout into the queue, in one
// transaction: conv turns each value of the bucket named from into a record
// (with the ID it had), which is imported (see Import) and handed to index,
// for the owner's own index entries; the queue's sequence continues from
// the old bucket's; then the buckets named drop (from among them) are
// deleted. It returns how many records it moved; none, and no write, when
// there is no bucket named from.
func (b *Bolt) Convert(from string, drop []string, conv func(tx *store.Tx, v []byte) (*Record, error), index func(tx *store.Tx, r *Record) error) (int, error) {
	present := false
	if err := b.db.View(func(tx *bolt.Tx) error { present = tx.Bucket([]byte(from)) != nil; return nil }); err != nil || !present {
		return 0, err
	}
	n := 0
	err := b.db.Update(func(tx *bolt.Tx) error {
		n = 0
		old := tx.Bucket([]byte(from))
		if old == nil {
			return nil
		}
		err := old.ForEach(func(k, v []byte) error {
			r, err := conv(store.BoltTx(tx), v)
			if err != nil {
				return fmt.Errorf("converting %s %x: %w", from, k, err)
			}
			if err := b.Import(tx, r); err != nil {
				return err
			}
			n++
			return index(store.BoltTx(tx), r)
		})
		if err != nil {
			return err
		}
		rec := tx.Bucket(b.bRec)
		if err := rec.SetSequence(max(rec.Sequence(), old.Sequence())); err != nil {
			return err
		}
		for _, name := range drop {
			if tx.Bucket([]byte(name)) != nil {
				if err := tx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}
