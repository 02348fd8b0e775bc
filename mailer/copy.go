package mailer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/herald-im/herald/store"
)

// CopyStorage builds the outbox's own indexes (by ref and by recipient) in
// dst from the outbox records already copied there (`herald
// migrate-storage` copies the queue records themselves, keeping their ids,
// with queue.Copy first), in batches of at most 1,000 mails per destination
// transaction. dst's index tables must be empty. The dev mailbox is not
// copied: it holds test mail only.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	q := &Queue{db: dst}
	if err := q.openStorage(); err != nil {
		return err
	}
	var after uint64
	for {
		var ids []uint64
		var ms []Mail
		err := dst.ViewContext(ctx, func(tx *store.Tx) error {
			ids, ms = ids[:0], ms[:0]
			var err error
			ids, err = outboxIDs(tx, after, store.CopyBatch)
			if err != nil {
				return err
			}
			for _, id := range ids {
				r, err := q.be.Read(tx, id, false)
				if err != nil {
					return err
				}
				ms = append(ms, toMail(r))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("mailer: reading the copied outbox: %w", err)
		}
		if len(ms) == 0 {
			return nil
		}
		if err := dst.UpdateContext(ctx, func(tx *store.Tx) error {
			for _, m := range ms {
				if err := q.idx.add(tx, m.Ref, strings.ToLower(m.To), m.ID); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("mailer: writing the outbox indexes: %w", err)
		}
		if progress != nil {
			progress(len(ms))
		}
		after = ms[len(ms)-1].ID
	}
}

// outboxIDs lists up to limit ids of outbox records after the id after, in
// ascending order, on PostgreSQL (CopyStorage's destination).
func outboxIDs(tx *store.Tx, after uint64, limit int) ([]uint64, error) {
	if tx.PG == nil {
		return nil, fmt.Errorf("mailer: CopyStorage copies into PostgreSQL")
	}
	return collectIDs(tx.PG.Query(tx.Context(), `SELECT id FROM queue_records WHERE queue = 'outbox' AND id > $1 ORDER BY queue, id LIMIT $2`, int64(after), limit))
}

// SumStorage sums the outbox's own indexes ("outbox_ref", "outbox_to"):
// every (value, mail id) entry in ascending order, identically on both
// backends.
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	var out []store.TableSum
	for _, t := range []struct {
		name string
		bkt  []byte
		sql  string
	}{
		{"outbox_ref", bktRef, `SELECT ref, id FROM outbox_ref ORDER BY ref, id`},
		{"outbox_to", bktTo, `SELECT addr, id FROM outbox_to ORDER BY addr, id`},
	} {
		s := store.NewSummer(t.name)
		add := func(v string, id uint64) {
			raw, _ := json.Marshal([]any{v, id})
			s.Add(raw)
		}
		if db.Backend() == store.BackendPostgres {
			rows, err := db.PG().Pool().Query(ctx, t.sql)
			if err != nil {
				return nil, err
			}
			for rows.Next() {
				var v string
				var id int64
				if err := rows.Scan(&v, &id); err != nil {
					rows.Close()
					return nil, err
				}
				add(v, uint64(id))
			}
			if err := rows.Err(); err != nil {
				return nil, err
			}
		} else if err := eachIndexBolt(db, t.bkt, add); err != nil {
			return nil, err
		}
		out = append(out, s.Sum())
	}
	return out, nil
}
