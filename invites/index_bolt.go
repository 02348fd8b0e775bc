package invites

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// The bbolt buckets of the indexes and counters described in index.go.
var (
	bktExpiry = []byte("invites_expiry")
	bktErase  = []byte("invites_erase")
	bktBy     = []byte("invites_by")
	bktCount  = []byte("invites_count")
)

// countsVersion marks, in invites_count, that the indexes above were built
// for every stored invite (a data dir from schema version 1 has none; New
// builds them once).
var countsVersion = []byte("indexed.2")

func byPrefix(kind, value string) []byte { return append(join0(kind, value), 0) }

func timeIDKey(t time.Time, id uint64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	binary.BigEndian.PutUint64(k[8:], id)
	return k
}

func stateCountKey(state string) []byte { return join0("state", state) }

func dayCountKey(kind byte, day uint64) []byte {
	return append([]byte("day\x00"+string(kind)), store.U64(day)...)
}

// sweepKeys are inv's keys in the expiry, erase and by indexes (bucket, key).
func sweepKeys(inv *Invite) [][2][]byte {
	if inv == nil {
		return nil
	}
	id := store.U64(inv.ID)
	var out [][2][]byte
	if inv.State == StatePending && !inv.ExpiresAt.IsZero() {
		out = append(out, [2][]byte{bktExpiry, timeIDKey(inv.ExpiresAt, inv.ID)})
	}
	if holdsSecret(inv) {
		out = append(out, [2][]byte{bktErase, timeIDKey(inv.StateChanged, inv.ID)})
	}
	for _, kv := range [][2]string{{bySender, inv.Sender}, {byRoom, inv.RoomID}, {byAlias, inv.RoomAlias}, {byHomeserver, inv.Homeserver}} {
		if kv[1] != "" {
			out = append(out, [2][]byte{bktBy, append(byPrefix(kv[0], kv[1]), id...)})
		}
	}
	return out
}

func addCount(b *bolt.Bucket, key []byte, delta int64) error {
	var n int64
	if v := b.Get(key); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	if n < 0 {
		n = 0
	}
	if n == 0 {
		return b.Delete(key)
	}
	return b.Put(key, store.U64(uint64(n)))
}

// indexSweepsAndCounts moves the sweep indexes and counters from old (nil for
// a new invite) to inv (nil for a deleted one).
func indexSweepsAndCounts(tx *store.Tx, old, inv *Invite) error {
	oldKeys, newKeys := sweepKeys(old), sweepKeys(inv)
	for _, ok := range oldKeys {
		keep := false
		for _, nk := range newKeys {
			if bytes.Equal(ok[0], nk[0]) && bytes.Equal(ok[1], nk[1]) {
				keep = true
				break
			}
		}
		if !keep {
			if err := tx.Bolt.Bucket(ok[0]).Delete(ok[1]); err != nil {
				return err
			}
		}
	}
	for _, nk := range newKeys {
		b := tx.Bolt.Bucket(nk[0])
		b.FillPercent = appendFill // keys are time+id or prefix+id
		if err := b.Put(nk[1], nil); err != nil {
			return err
		}
	}
	cb := tx.Bolt.Bucket(bktCount)
	for k, d := range counterChanges(old, inv) {
		if err := addCount(cb, boltCountKey(k), int64(d)); err != nil {
			return err
		}
	}
	return nil
}

// rebuildIndexes builds the sweep indexes and counters for every stored
// invite (and the pending invites' state index values), once, for a data dir written before they existed (schema version
// 1). It works in transactions of at most rebuildBatch invites, so a large
// data dir does not hold one long write transaction; an interrupted rebuild
// starts again from the beginning (it only adds keys and sets counters at
// the end). It returns how many invites it indexed.
func rebuildIndexes(db *store.DB) (int, error) {
	done := false
	if err := db.View(func(tx *store.Tx) error {
		done = tx.Bolt.Bucket(bktCount).Get(countsVersion) != nil
		return nil
	}); err != nil || done {
		return 0, err
	}
	const rebuildBatch = 5000
	counts := map[string]int64{}
	var after []byte
	n := 0
	for {
		last := after
		err := db.Update(func(tx *store.Tx) error {
			c := tx.Bolt.Bucket(bktInvites).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for i := 0; k != nil && i < rebuildBatch; k, v = c.Next() {
				inv := new(Invite)
				if err := json.Unmarshal(v, inv); err != nil {
					return fmt.Errorf("invite %x: %w", k, err)
				}
				for _, sk := range sweepKeys(inv) {
					b := tx.Bolt.Bucket(sk[0])
					b.FillPercent = appendFill
					if err := b.Put(sk[1], nil); err != nil {
						return err
					}
				}
				for _, ck := range counterKeys(inv) {
					counts[string(boltCountKey(ck))]++
				}
				if inv.State == StatePending {
					if err := tx.Bolt.Bucket(bktState).Put(stateKey(inv.State, inv.ID), pendingValue(inv)); err != nil {
						return err
					}
				}
				last = store.Copy(k)
				i++
				n++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		if bytes.Equal(last, after) {
			break
		}
		after = last
	}
	return n, db.Update(func(tx *store.Tx) error {
		cb := tx.Bolt.Bucket(bktCount)
		// Counters from an earlier interrupted rebuild are replaced.
		c := cb.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		for k, v := range counts {
			if err := cb.Put([]byte(k), store.U64(uint64(v))); err != nil {
				return err
			}
		}
		return cb.Put(countsVersion, []byte{1})
	})
}

// pendingValue is the value of a pending invite's state index entry: its
// mail id and expiry (8 bytes each), so the console's counts read the
// index, not the records. Other states have none. Entries written before
// schema 2 have none either: their readers decode the record.
func pendingValue(inv *Invite) []byte {
	if inv.State != StatePending {
		return nil
	}
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, inv.MailID)
	if !inv.ExpiresAt.IsZero() {
		binary.BigEndian.PutUint64(v[8:], uint64(inv.ExpiresAt.UnixNano()))
	}
	return v
}

// pendingEntries reads the pending invites' entries from the state index,
// newest first, below before (0: no bound), at most limit (0: all),
// decoding the record only for an entry without a value.
func pendingEntries(tx *store.Tx, before uint64, limit int) ([]pendingEntry, error) {
	prefix := join0(StatePending, "")
	var out []pendingEntry
	c := tx.Bolt.Bucket(bktState).Cursor()
	from := append(append([]byte{}, prefix...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	if before != 0 {
		from = append(append([]byte{}, prefix...), store.U64(before)...)
	}
	k, v := c.Seek(from)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix) && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
		if len(k) != len(prefix)+8 {
			continue
		}
		e := pendingEntry{id: u64(k[len(prefix):])}
		if len(v) == 16 {
			e.mailID = binary.BigEndian.Uint64(v)
			if ns := binary.BigEndian.Uint64(v[8:]); ns != 0 {
				e.expiresAt = time.Unix(0, int64(ns))
			}
		} else {
			inv, err := boltStorage{}.get(tx, e.id)
			if err != nil {
				return nil, err
			}
			e.mailID, e.expiresAt = inv.MailID, inv.ExpiresAt
		}
		out = append(out, e)
	}
	return out, nil
}
