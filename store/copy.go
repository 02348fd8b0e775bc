package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
)

// TableSum is what `herald migrate-storage` compares between the source and
// the copy for one kind of record: how many there are and a checksum over a
// canonical encoding of each, taken in a fixed order (ascending key). The
// owning feature package computes it the same way from either backend, from
// its own record types, so equal sums mean equal contents whatever the
// layout.
type TableSum struct {
	Table string `json:"table"`
	Count int64  `json:"count"`
	Sum   string `json:"sum"` // sha256, hex
}

// CopyBatch is the most records one destination transaction of a feature
// package's CopyStorage writes (herald migrate-storage): a copy of a
// million records is many short transactions, never one that holds
// everything.
const CopyBatch = 1000

// Summer builds a TableSum record by record.
type Summer struct {
	table string
	h     hash.Hash
	n     int64
}

// NewSummer starts the sum of table.
func NewSummer(table string) *Summer { return &Summer{table: table, h: sha256.New()} }

// Add counts one record given in its canonical encoding (each record is
// length-prefixed, so the boundaries count too).
func (s *Summer) Add(canonical []byte) {
	var l [8]byte
	binary.BigEndian.PutUint64(l[:], uint64(len(canonical)))
	s.h.Write(l[:])
	s.h.Write(canonical)
	s.n++
}

// Sum is the result.
func (s *Summer) Sum() TableSum {
	return TableSum{Table: s.table, Count: s.n, Sum: hex.EncodeToString(s.h.Sum(nil))}
}
