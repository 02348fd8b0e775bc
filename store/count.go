package store

import (
	"bytes"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// CountPrefix counts b's keys that are prefix followed by an 8-byte ID (U64),
// and returns the lowest such ID (the first queued, for IDs from
// NextSequence). It reads keys only, never values: the cost is one cursor
// step per matching key. Use it inside the transaction of b.
func CountPrefix(b *bolt.Bucket, prefix []byte) (n int, first uint64) {
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) != len(prefix)+8 {
			continue
		}
		if n == 0 {
			first = binary.BigEndian.Uint64(k[len(prefix):])
		}
		n++
	}
	return n, first
}
