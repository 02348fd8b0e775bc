package invites

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// CopyStorage copies everything package invites stores from src to dst
// (`herald migrate-storage`), whose invites tables are empty: the invites
// with their ids, states and secrets (their indexes, de-duplication entries
// and counters written as every write does), the opt-outs, the upstream
// vouches with their resolve times, and the onbind deliveries' own indexes,
// rebuilt from the onbind queue records already in dst (so queue.Copy runs
// first). Each destination transaction writes at most store.CopyBatch records;
// progress, if set, is told how many more each one copied.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	from, to := newStorage(src), newStorage(dst)
	for _, part := range []string{partInvites, partUpstream, partDeliveries} {
		if err := to.open(dst, part); err != nil {
			return err
		}
	}
	report := func(k int) {
		if progress != nil && k > 0 {
			progress(k) // how many more were copied
		}
	}
	var after uint64
	for {
		var batch []*Invite
		if err := src.ViewContext(ctx, func(tx *store.Tx) (err error) {
			batch, err = from.records(tx, after, store.CopyBatch)
			return err
		}); err != nil {
			return fmt.Errorf("invites: reading invites: %w", err)
		}
		if len(batch) == 0 {
			break
		}
		last := batch[len(batch)-1].ID
		if err := dst.UpdateContext(ctx, func(tx *store.Tx) error {
			for _, inv := range batch {
				if err := to.put(tx, inv); err != nil {
					return err
				}
				if err := to.index(tx, nil, inv, false); err != nil {
					return err
				}
			}
			return to.setNextID(tx, last)
		}); err != nil {
			return fmt.Errorf("invites: writing invites: %w", err)
		}
		report(len(batch))
		after = last
	}

	var d *storageDump
	if err := src.ViewContext(ctx, func(tx *store.Tx) (err error) {
		d, err = from.dump(tx)
		return err
	}); err != nil {
		return fmt.Errorf("invites: reading opt-outs and vouches: %w", err)
	}
	var writes []func(tx *store.Tx) error
	for _, o := range d.optOuts {
		writes = append(writes, func(tx *store.Tx) error { return to.putOptOut(tx, o) })
	}
	for _, v := range d.vouches {
		writes = append(writes, func(tx *store.Tx) error { return to.putVouch(tx, v.id, v.raw) })
	}
	for _, v := range d.dues {
		writes = append(writes, func(tx *store.Tx) error { return to.addVouchDue(tx, v.due, v.id) })
	}
	if err := inBatches(ctx, dst, writes, report); err != nil {
		return fmt.Errorf("invites: writing opt-outs and vouches: %w", err)
	}

	// The deliveries' indexes, from the onbind records in dst.
	be, err := deliveryQueueOf(dst)
	if err != nil {
		return err
	}
	writes = nil
	var before uint64
	for {
		rs, err := be.List(ctx, queue.Page{Before: before, Limit: store.CopyBatch})
		if err != nil {
			return fmt.Errorf("invites: reading the onbind deliveries: %w", err)
		}
		if len(rs) == 0 {
			break
		}
		for i := range rs {
			dl := toDelivery(&rs[i])
			writes = append(writes, func(tx *store.Tx) error { return to.indexDelivery(tx, dl) })
		}
		before = rs[len(rs)-1].ID
	}
	if err := inBatches(ctx, dst, writes, report); err != nil {
		return fmt.Errorf("invites: indexing the onbind deliveries: %w", err)
	}
	// The counters were written as deltas, one per invite: fold them.
	return (&Service{db: dst}).FoldCounts(ctx)
}

// deliveryQueueOf is the onbind queue's backend on db.
func deliveryQueueOf(db *store.DB) (queue.Backend, error) {
	if db.Backend() == store.BackendPostgres {
		return pgqueue.New(db.PG(), deliveryQueue)
	}
	return queue.OpenBolt(db.Bolt(), deliveryQueue)
}

// inBatches runs writes in dst transactions of at most store.CopyBatch each.
func inBatches(ctx context.Context, dst *store.DB, writes []func(tx *store.Tx) error, report func(int)) error {
	for len(writes) > 0 {
		batch := writes[:min(store.CopyBatch, len(writes))]
		writes = writes[len(batch):]
		if err := dst.UpdateContext(ctx, func(tx *store.Tx) error {
			for _, w := range batch {
				if err := w(tx); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		report(len(batch))
	}
	return nil
}

// SumStorage sums every kind of record package invites stores, the same
// way on either backend (store.TableSum): each record's canonical encoding
// (the invite's and opt-out's JSON re-encoded from their types; ids and
// times as numbers, times in microseconds as PostgreSQL keeps them) in
// ascending key order. The de-duplication entries and counters are summed
// too: a copy that rebuilt them differently shows.
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	st := newStorage(db)
	inv := store.NewSummer("invites")
	var after uint64
	for {
		var batch []*Invite
		if err := db.ViewContext(ctx, func(tx *store.Tx) (err error) {
			batch, err = st.records(tx, after, store.CopyBatch)
			return err
		}); err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			break
		}
		for _, x := range batch {
			raw, err := json.Marshal(x)
			if err != nil {
				return nil, err
			}
			inv.Add(raw)
		}
		after = batch[len(batch)-1].ID
	}
	var d *storageDump
	if err := db.ViewContext(ctx, func(tx *store.Tx) (err error) {
		d, err = st.dump(tx)
		return err
	}); err != nil {
		return nil, err
	}
	out := []store.TableSum{inv.Sum()}

	slices.SortFunc(d.optOuts, func(a, b OptOut) int {
		return cmp.Or(cmp.Compare(a.Address, b.Address), cmp.Compare(a.Sender, b.Sender))
	})
	s := store.NewSummer("invite_optouts")
	for _, o := range d.optOuts {
		raw, err := json.Marshal(o)
		if err != nil {
			return nil, err
		}
		s.Add(raw)
	}
	out = append(out, s.Sum())

	slices.SortFunc(d.vouches, func(a, b vouchRow) int { return cmp.Compare(a.id, b.id) })
	s = store.NewSummer("invite_vouches")
	for _, v := range d.vouches {
		var x Vouch
		if err := json.Unmarshal(v.raw, &x); err != nil {
			return nil, err
		}
		raw, err := json.Marshal(x)
		if err != nil {
			return nil, err
		}
		s.Add(append(store.U64(v.id), raw...))
	}
	out = append(out, s.Sum())

	slices.SortFunc(d.dues, func(a, b vouchDue) int {
		return cmp.Or(cmp.Compare(a.due.UnixMicro(), b.due.UnixMicro()), cmp.Compare(a.id, b.id))
	})
	s = store.NewSummer("invite_vouch_due")
	for _, v := range d.dues {
		s.Add(append(store.U64(uint64(v.due.UnixMicro())), store.U64(v.id)...))
	}
	out = append(out, s.Sum())

	slices.SortFunc(d.dedup, func(a, b dedupRow) int {
		return cmp.Or(cmp.Compare(a.sender, b.sender), cmp.Compare(a.room, b.room), cmp.Compare(a.medium, b.medium), cmp.Compare(a.address, b.address))
	})
	s = store.NewSummer("invite_dedup")
	for _, r := range d.dedup {
		s.Add(append(join0(r.sender, r.room, r.medium, r.address, ""), store.U64(r.id)...))
	}
	out = append(out, s.Sum())

	names := make([]string, 0, len(d.counters))
	for k := range d.counters {
		names = append(names, k)
	}
	sort.Strings(names)
	s = store.NewSummer("invite_counts")
	for _, k := range names {
		var b bytes.Buffer
		b.WriteString(k)
		b.WriteByte(0)
		_ = binary.Write(&b, binary.BigEndian, int64(d.counters[k]))
		s.Add(b.Bytes())
	}
	out = append(out, s.Sum())

	slices.SortFunc(d.byInvite, func(a, b [2]uint64) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	s = store.NewSummer("onbind_invite")
	for _, r := range d.byInvite {
		s.Add(append(store.U64(r[0]), store.U64(r[1])...))
	}
	out = append(out, s.Sum())

	slices.SortFunc(d.byAddress, func(a, b addressRow) int {
		return cmp.Or(cmp.Compare(a.medium, b.medium), cmp.Compare(a.address, b.address), cmp.Compare(a.delivery, b.delivery))
	})
	s = store.NewSummer("onbind_address")
	for _, r := range d.byAddress {
		s.Add(append(join0(r.medium, r.address, ""), store.U64(r.delivery)...))
	}
	out = append(out, s.Sum())
	return out, nil
}
