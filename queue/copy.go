package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/herald-im/herald/store"
)

// CopyBatch is how many records Copy writes per destination transaction.
const CopyBatch = store.CopyBatch

// Copy copies every record of src into dst (herald migrate-storage), in
// ascending ID order, CopyBatch records per dst transaction: each keeps its
// ID, state, times, attempts, last error, Meta and payload, and dst's
// counters and indexes follow (Backend.Import). Leases are not copied: a
// copied pending record is claimable at once. each, if set, is called for
// every record in the same dst transaction, for the owner's own index
// entries; progress, if set, is told after each batch how many records it
// copied. dst should hold none of src's IDs (Import refuses them). It returns
// how many records it copied.
func Copy(ctx context.Context, src, dst Backend, each func(tx Tx, r *Record) error, progress func(n int)) (int, error) {
	total := 0
	var after uint64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		batch, err := src.Scan(ctx, after, CopyBatch)
		if err != nil {
			return total, err
		}
		if len(batch) == 0 {
			return total, nil
		}
		err = dst.Write(ctx, func(tx Tx) error {
			for i := range batch {
				r := batch[i] // a copy per run: the function may run again
				r.Attempts = append([]Attempt(nil), r.Attempts...)
				if err := dst.Import(tx, &r); err != nil {
					return err
				}
				if each != nil {
					if err := each(tx, &r); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += len(batch)
		after = batch[len(batch)-1].ID
		if progress != nil {
			progress(len(batch))
		}
	}
}

// Sum is the count and checksum of every record of be (herald
// migrate-storage compares a queue's on both sides): each record in
// ascending ID order, in a canonical encoding of what Copy copies. Times
// count to the microsecond, as PostgreSQL keeps them. The Table of the
// result is "queue"; callers name it for the queue.
func Sum(ctx context.Context, be Backend) (store.TableSum, error) {
	s := store.NewSummer("queue")
	var after uint64
	for {
		batch, err := be.Scan(ctx, after, CopyBatch)
		if err != nil {
			return store.TableSum{}, err
		}
		if len(batch) == 0 {
			return s.Sum(), nil
		}
		for i := range batch {
			c, err := canonical(&batch[i])
			if err != nil {
				return store.TableSum{}, err
			}
			s.Add(c)
		}
		after = batch[len(batch)-1].ID
	}
}

// canonical encodes r for Sum: fixed-width numbers and length-prefixed
// strings, in field order.
func canonical(r *Record) ([]byte, error) {
	attempts, err := json.Marshal(r.Attempts)
	if len(r.Attempts) == 0 {
		attempts, err = []byte("[]"), nil
	}
	if err != nil {
		return nil, err
	}
	var b []byte
	u := func(v uint64) { b = binary.BigEndian.AppendUint64(b, v) }
	str := func(p []byte) { u(uint64(len(p))); b = append(b, p...) }
	tm := func(t time.Time) {
		if t.IsZero() {
			u(0)
			return
		}
		u(uint64(t.UnixMicro()))
	}
	u(r.ID)
	str([]byte(r.Kind))
	str([]byte(r.State))
	tm(r.Created)
	tm(r.NextAttempt)
	tm(r.RetryFrom)
	u(uint64(r.RetryBase))
	tm(r.Finished)
	str([]byte(r.LastError))
	str(attempts)
	str(r.Meta)
	str(r.Data) // no payload and an empty one alike: backends differ there
	return b, nil
}
