package mailer

import (
	"bytes"
	"context"
	"encoding/binary"

	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The outbox's own indexes on bbolt. Keys are value + 0 + big-endian id, so
// cursors walk them in order.
var (
	bktRef = []byte("outbox_ref") // ref + 0 + id -> nil
	bktTo  = []byte("outbox_to")  // lower-cased address + 0 + id -> nil
)

// openStorage opens the outbox queue and its indexes on the database's
// backend.
func (q *Queue) openStorage() error {
	if q.db.Backend() == store.BackendPostgres {
		be, err := pgqueue.New(q.db.PG(), "outbox")
		if err != nil {
			return err
		}
		q.be, q.idx = be, pgIndex{db: q.db}
		return nil
	}
	if err := store.Buckets(q.db.Bolt(), bktRef, bktTo); err != nil {
		return err
	}
	be, err := queue.OpenBolt(q.db.Bolt(), "outbox")
	if err != nil {
		return err
	}
	be.CommitThrough(q.db.Committer())
	q.be, q.bolt, q.idx = be, be, boltIndex{db: q.db}
	return nil
}

type boltIndex struct {
	db *store.DB
}

func (boltIndex) add(tx *store.Tx, ref, to string, id uint64) error {
	if ref != "" {
		if err := tx.Bolt.Bucket(bktRef).Put(idxKey(ref, id), nil); err != nil {
			return err
		}
	}
	return tx.Bolt.Bucket(bktTo).Put(idxKey(to, id), nil)
}

func (boltIndex) remove(tx *store.Tx, ref, to string, id uint64) error {
	if ref != "" {
		if err := tx.Bolt.Bucket(bktRef).Delete(idxKey(ref, id)); err != nil {
			return err
		}
	}
	return tx.Bolt.Bucket(bktTo).Delete(idxKey(to, id))
}

func (b boltIndex) ids(_ context.Context, ref, to string) ([]uint64, error) {
	var ids []uint64
	err := b.db.View(func(tx *store.Tx) error {
		bk, prefix := tx.Bolt.Bucket(bktRef), append([]byte(ref), 0)
		if ref == "" {
			bk, prefix = tx.Bolt.Bucket(bktTo), append([]byte(to), 0)
		}
		for id := range store.Descending(bk, prefix) {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

func (boltIndex) idsTx(tx *store.Tx, to string) ([]uint64, error) {
	prefix := append([]byte(to), 0)
	var ids []uint64
	c := tx.Bolt.Bucket(bktTo).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) == len(prefix)+8 {
			ids = append(ids, binary.BigEndian.Uint64(k[len(prefix):]))
		}
	}
	return ids, nil
}

// eachIndexBolt calls fn with every entry of the index bucket bkt (value,
// id), in key order.
func eachIndexBolt(db *store.DB, bkt []byte, fn func(value string, id uint64)) error {
	return db.View(func(tx *store.Tx) error {
		c := tx.Bolt.Bucket(bkt).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) < 9 || k[len(k)-9] != 0 {
				continue
			}
			fn(string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:]))
		}
		return nil
	})
}

func idxKey(s string, id uint64) []byte {
	k := make([]byte, 0, len(s)+9)
	k = append(k, s...)
	k = append(k, 0)
	return append(k, store.U64(id)...)
}
