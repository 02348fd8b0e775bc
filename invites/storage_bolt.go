package invites

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// boltStorage keeps the invites in bbolt buckets (store.go, index.go,
// lifecycle.go, upstream.go and delivery.go name them and their keys).
type boltStorage struct{}

// Parts of the storage opened on demand: the invites themselves (New), the
// upstream vouches (UseUpstream) and the deliveries' indexes
// (OpenDeliveries).
const (
	partInvites    = "invites"
	partUpstream   = "upstream"
	partDeliveries = "deliveries"
)

// open creates the buckets of one part of the storage.
func (boltStorage) open(db *store.DB, part string) error {
	switch part {
	case partInvites:
		// The invites' buckets and the opt-out list (lifecycle.go), which
		// store-invite checks before writing a new invite (queueOptedOut).
		return store.Buckets(db.Bolt(), append(allBuckets, bktOptOut)...)
	case partUpstream:
		return store.Buckets(db.Bolt(), bktUpstream, bktUpstreamDue)
	case partDeliveries:
		return store.Buckets(db.Bolt(), bktDeliveryInvite, bktDeliveryAddress)
	}
	return nil
}

func (boltStorage) get(tx *store.Tx, id uint64) (*Invite, error) {
	raw := tx.Bolt.Bucket(bktInvites).Get(store.U64(id))
	if raw == nil {
		return nil, ErrNotFound
	}
	inv := new(Invite)
	if err := json.Unmarshal(raw, inv); err != nil {
		return nil, err
	}
	return inv, nil
}

func (st boltStorage) getMany(tx *store.Tx, ids []uint64) ([]*Invite, error) {
	out := make([]*Invite, 0, len(ids))
	for _, id := range ids {
		inv, err := st.get(tx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, inv)
	}
	return out, nil
}

func (boltStorage) put(tx *store.Tx, inv *Invite) error {
	raw, err := json.Marshal(inv)
	if err != nil {
		return err
	}
	b := tx.Bolt.Bucket(bktInvites)
	b.FillPercent = appendFill
	return b.Put(store.U64(inv.ID), raw)
}

func (boltStorage) remove(tx *store.Tx, id uint64) error {
	return tx.Bolt.Bucket(bktInvites).Delete(store.U64(id))
}

func (boltStorage) nextID(tx *store.Tx) (uint64, error) {
	return tx.Bolt.Bucket(bktInvites).NextSequence()
}

func (boltStorage) index(tx *store.Tx, old, inv *Invite, _ bool) error {
	if err := indexSweepsAndCounts(tx, old, inv); err != nil {
		return err
	}
	tb, ab, db, sb := tx.Bolt.Bucket(bktToken), tx.Bolt.Bucket(bktAddr), tx.Bolt.Bucket(bktDedup), tx.Bolt.Bucket(bktState)
	if old != nil {
		if old.Token != "" && (inv == nil || old.Token != inv.Token) {
			if err := tb.Delete([]byte(old.Token)); err != nil {
				return err
			}
		}
		if inv == nil || old.Medium != inv.Medium || old.Address != inv.Address {
			if err := ab.Delete(addrKey(old.Medium, old.Address, old.ID)); err != nil {
				return err
			}
		}
		if inv == nil || old.State != inv.State {
			if err := sb.Delete(stateKey(old.State, old.ID)); err != nil {
				return err
			}
		}
		dk := dedupKey(old.Sender, old.RoomID, old.Medium, old.Address)
		if v := db.Get(dk); v != nil && u64(v) == old.ID {
			if err := db.Delete(dk); err != nil {
				return err
			}
		}
	}
	if inv == nil {
		return nil
	}
	id := store.U64(inv.ID)
	if inv.Token != "" {
		if err := tb.Put([]byte(inv.Token), id); err != nil {
			return err
		}
	}
	if inv.Address != "" {
		if err := ab.Put(addrKey(inv.Medium, inv.Address, inv.ID), nil); err != nil {
			return err
		}
	}
	sb.FillPercent = appendFill
	if err := sb.Put(stateKey(inv.State, inv.ID), pendingValue(inv)); err != nil {
		return err
	}
	if inv.State == StatePending && inv.Token != "" {
		if err := db.Put(dedupKey(inv.Sender, inv.RoomID, inv.Medium, inv.Address), id); err != nil {
			return err
		}
	}
	return nil
}

func (boltStorage) byToken(tx *store.Tx, token string) (uint64, error) {
	id := tx.Bolt.Bucket(bktToken).Get([]byte(token))
	if len(id) != 8 {
		return 0, nil
	}
	return u64(id), nil
}

// prefixIDs lists the ids of b's keys that are prefix followed by an
// 8-byte id, in key order.
func prefixIDs(b *bolt.Bucket, prefix []byte) []uint64 {
	var out []uint64
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) == len(prefix)+8 {
			out = append(out, u64(k[len(prefix):]))
		}
	}
	return out
}

func (boltStorage) forAddress(tx *store.Tx, medium, address string) ([]uint64, error) {
	return prefixIDs(tx.Bolt.Bucket(bktAddr), addrPrefix(medium, address)), nil
}

func (boltStorage) dedup(tx *store.Tx, sender, room, medium, address string) (uint64, error) {
	v := tx.Bolt.Bucket(bktDedup).Get(dedupKey(sender, room, medium, address))
	if len(v) != 8 {
		return 0, nil
	}
	return u64(v), nil
}

// claimDedup is dedup: bbolt's single writer already serializes store-invites.
func (st boltStorage) claimDedup(tx *store.Tx, sender, room, medium, address string) (uint64, uint64, error) {
	id, err := st.dedup(tx, sender, room, medium, address)
	return id, 0, err
}

func (boltStorage) inState(tx *store.Tx, state string) ([]uint64, error) {
	return prefixIDs(tx.Bolt.Bucket(bktState), join0(state, "")), nil
}

func (boltStorage) hasData(tx *store.Tx) (bool, error) {
	k, _ := tx.Bolt.Bucket(bktInvites).Cursor().First()
	return k != nil, nil
}

// boltCountKey is k's key in invites_count.
func boltCountKey(k counterKey) []byte {
	if k.kind == 's' {
		return stateCountKey(k.state)
	}
	return dayCountKey(k.kind, k.day)
}

func (boltStorage) counters(tx *store.Tx, keys []counterKey) (map[counterKey]int, error) {
	b := tx.Bolt.Bucket(bktCount)
	out := make(map[counterKey]int, len(keys))
	for _, k := range keys {
		out[k] = 0
		if v := b.Get(boltCountKey(k)); len(v) == 8 {
			out[k] = int(binary.BigEndian.Uint64(v))
		}
	}
	return out, nil
}

func (boltStorage) expiryDue(tx *store.Tx, now time.Time, limit int) ([]uint64, error) {
	end := store.U64(uint64(now.UnixNano()) + 1) // keys are expires_at id: every key below is due
	var ids []uint64
	c := tx.Bolt.Bucket(bktExpiry).Cursor()
	for k, _ := c.First(); k != nil && (limit <= 0 || len(ids) < limit) && bytes.Compare(k, end) < 0; k, _ = c.Next() {
		if len(k) == 16 {
			ids = append(ids, u64(k[8:]))
		}
	}
	return ids, nil
}

func (boltStorage) eraseDue(tx *store.Tx, from eraseCursor, cutoff time.Time, limit int) ([]uint64, eraseCursor, error) {
	end := store.U64(uint64(cutoff.UnixNano())) // state_changed strictly before cutoff
	var ids []uint64
	next := from
	c := tx.Bolt.Bucket(bktErase).Cursor()
	k, _ := c.First()
	if from.id != 0 {
		k, _ = c.Seek(append(timeIDKey(from.at, from.id), 0))
	}
	for ; k != nil && len(ids) < limit && bytes.Compare(k, end) < 0; k, _ = c.Next() {
		if len(k) == 16 {
			ids = append(ids, u64(k[8:]))
			next = eraseCursor{at: time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))), id: u64(k[8:])}
		}
	}
	return ids, next, nil
}

// boltSource is the bucket and key prefix whose prefix+ID keys name src's invites.
func boltSource(src source) (bucket, prefix []byte) {
	switch src.kind {
	case "":
		return bktInvites, nil
	case byState:
		return bktState, join0(src.value, "")
	}
	return bktBy, byPrefix(src.kind, src.value)
}

func (boltStorage) descend(tx *store.Tx, src source, before uint64, limit int) ([]uint64, error) {
	bucket, prefix := boltSource(src)
	var out []uint64
	for id := range store.DescendingBefore(tx.Bolt.Bucket(bucket), prefix, before) {
		out = append(out, id)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, nil
}

func (boltStorage) countSource(tx *store.Tx, src source) (int, error) {
	bucket, prefix := boltSource(src)
	n, _ := store.CountPrefix(tx.Bolt.Bucket(bucket), prefix)
	return n, nil
}

func (boltStorage) pending(tx *store.Tx, before uint64, limit int) ([]pendingEntry, error) {
	return pendingEntries(tx, before, limit)
}

func (boltStorage) optedOut(tx *store.Tx, address, sender string) (bool, error) {
	b := tx.Bolt.Bucket(bktOptOut)
	if b == nil {
		return false, nil
	}
	return b.Get(join0(address, OptOutAnyone)) != nil || b.Get(join0(address, sender)) != nil, nil
}

func (boltStorage) anyOptOut(tx *store.Tx, address string) (bool, error) {
	b := tx.Bolt.Bucket(bktOptOut)
	if b == nil {
		return false, nil
	}
	prefix := append(join0(address), 0)
	k, _ := b.Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix), nil
}

func (boltStorage) putOptOut(tx *store.Tx, o OptOut) error {
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	return tx.Bolt.Bucket(bktOptOut).Put(join0(o.Address, o.Sender), raw)
}

func (boltStorage) deleteOptOut(tx *store.Tx, address, sender string) error {
	return tx.Bolt.Bucket(bktOptOut).Delete(join0(address, sender))
}

func (boltStorage) putVouch(tx *store.Tx, id uint64, raw []byte) error {
	return tx.Bolt.Bucket(bktUpstream).Put(store.U64(id), raw)
}

func (boltStorage) getVouch(tx *store.Tx, id uint64) ([]byte, error) {
	b := tx.Bolt.Bucket(bktUpstream)
	if b == nil {
		return nil, nil
	}
	return store.Copy(b.Get(store.U64(id))), nil
}

func (boltStorage) deleteVouch(tx *store.Tx, id uint64) error {
	b := tx.Bolt.Bucket(bktUpstream)
	if b == nil {
		return nil
	}
	return b.Delete(store.U64(id))
}

func (boltStorage) addVouchDue(tx *store.Tx, due time.Time, id uint64) error {
	return tx.Bolt.Bucket(bktUpstreamDue).Put(store.TimeKey(due, store.U64(id)), nil)
}

func (boltStorage) firstVouchDue(tx *store.Tx) (time.Time, uint64, bool, error) {
	b := tx.Bolt.Bucket(bktUpstreamDue)
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.First() {
		if len(k) == 16 {
			return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))), binary.BigEndian.Uint64(k[8:]), true, nil
		}
		if !tx.Writable() {
			break
		}
		if err := b.Delete(k); err != nil { // not a key of ours
			return time.Time{}, 0, false, err
		}
	}
	return time.Time{}, 0, false, nil
}

func (boltStorage) deleteVouchDue(tx *store.Tx, due time.Time, id uint64) error {
	return tx.Bolt.Bucket(bktUpstreamDue).Delete(store.TimeKey(due, store.U64(id)))
}

func (boltStorage) indexDelivery(tx *store.Tx, dl Delivery) error {
	for _, inv := range dl.InviteIDs {
		if err := tx.Bolt.Bucket(bktDeliveryInvite).Put(append(store.U64(inv), store.U64(dl.ID)...), nil); err != nil {
			return err
		}
	}
	return tx.Bolt.Bucket(bktDeliveryAddress).Put(addressKey(dl.Medium, dl.Address, dl.ID), nil)
}

func (boltStorage) unindexDelivery(tx *store.Tx, dl Delivery) error {
	for _, inv := range dl.InviteIDs {
		if err := tx.Bolt.Bucket(bktDeliveryInvite).Delete(append(store.U64(inv), store.U64(dl.ID)...)); err != nil {
			return err
		}
	}
	return tx.Bolt.Bucket(bktDeliveryAddress).Delete(addressKey(dl.Medium, dl.Address, dl.ID))
}

func (boltStorage) deliveriesOf(tx *store.Tx, inviteID uint64) ([]uint64, error) {
	b := tx.Bolt.Bucket(bktDeliveryInvite)
	if b == nil {
		return nil, nil
	}
	return prefixIDs(b, store.U64(inviteID)), nil
}

func (boltStorage) deliveriesTo(tx *store.Tx, medium, address string) ([]uint64, error) {
	b := tx.Bolt.Bucket(bktDeliveryAddress)
	if b == nil {
		return nil, nil
	}
	return prefixIDs(b, join0(medium, address, "")), nil
}

func addressKey(medium, address string, id uint64) []byte {
	return append(join0(medium, address, ""), store.U64(id)...)
}

func (boltStorage) records(tx *store.Tx, after uint64, limit int) ([]*Invite, error) {
	var out []*Invite
	b := tx.Bolt.Bucket(bktInvites)
	if b == nil {
		return nil, nil
	}
	c := b.Cursor()
	k, v := c.Seek(store.U64(after + 1))
	for ; k != nil && len(out) < limit; k, v = c.Next() {
		inv := new(Invite)
		if err := json.Unmarshal(v, inv); err != nil {
			return nil, fmt.Errorf("invite %x: %w", k, err)
		}
		out = append(out, inv)
	}
	return out, nil
}

func (boltStorage) setNextID(tx *store.Tx, last uint64) error {
	b := tx.Bolt.Bucket(bktInvites)
	if b.Sequence() >= last {
		return nil
	}
	return b.SetSequence(last)
}

// split0 splits a key of NUL-separated parts.
func split0(k []byte) []string {
	var out []string
	for _, p := range bytes.Split(k, []byte{0}) {
		out = append(out, string(p))
	}
	return out
}

func (boltStorage) dump(tx *store.Tx) (*storageDump, error) {
	d := &storageDump{counters: map[string]int{}}
	each := func(bucket []byte, fn func(k, v []byte) error) error {
		b := tx.Bolt.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	}
	err := errors.Join(
		each(bktOptOut, func(_, v []byte) error {
			var o OptOut
			if err := json.Unmarshal(v, &o); err != nil {
				return err
			}
			d.optOuts = append(d.optOuts, o)
			return nil
		}),
		each(bktUpstream, func(k, v []byte) error {
			if len(k) == 8 {
				d.vouches = append(d.vouches, vouchRow{id: u64(k), raw: store.Copy(v)})
			}
			return nil
		}),
		each(bktUpstreamDue, func(k, _ []byte) error {
			if len(k) == 16 {
				d.dues = append(d.dues, vouchDue{due: time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))), id: u64(k[8:])})
			}
			return nil
		}),
		each(bktDedup, func(k, v []byte) error {
			if p := split0(k); len(p) == 4 && len(v) == 8 {
				d.dedup = append(d.dedup, dedupRow{sender: p[0], room: p[1], medium: p[2], address: p[3], id: u64(v)})
			}
			return nil
		}),
		each(bktCount, func(k, v []byte) error {
			if len(v) != 8 || bytes.Equal(k, countsVersion) {
				return nil
			}
			var ck counterKey
			switch {
			case bytes.HasPrefix(k, []byte("state\x00")):
				ck = stateCounter(string(k[len("state\x00"):]))
			case bytes.HasPrefix(k, []byte("day\x00")) && len(k) == len("day\x00")+1+8:
				ck = counterKey{kind: k[len("day\x00")], day: u64(k[len("day\x00")+1:])}
			default:
				return nil
			}
			if n := int(binary.BigEndian.Uint64(v)); n != 0 {
				d.counters[ck.name()] = n
			}
			return nil
		}),
		each(bktDeliveryInvite, func(k, _ []byte) error {
			if len(k) == 16 {
				d.byInvite = append(d.byInvite, [2]uint64{u64(k[:8]), u64(k[8:])})
			}
			return nil
		}),
		each(bktDeliveryAddress, func(k, _ []byte) error {
			if p := split0(k[:max(len(k)-8, 0)]); len(k) > 8 && len(p) == 3 {
				d.byAddress = append(d.byAddress, addressRow{medium: p[0], address: p[1], delivery: u64(k[len(k)-8:])})
			}
			return nil
		}),
	)
	return d, err
}
