// Package store opens Herald's single bbolt file and records its schema version.
// Feature packages own their buckets and create them when they are constructed.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout version this build writes. Open refuses a file
// written by a newer Herald, and is where migrations from older ones go.
//
// 2: invites keep expiry, erase and by-field indexes and per-state and
// per-day counters (invites/index.go). The invites package builds them for
// a version 1 file when it opens (it knows its records; store does not), in
// its own transactions, and marks them built; a crash meanwhile makes the
// next start build them again. Herald with schema 1 refuses a version 2
// file, since it would write invites without their counters.
const SchemaVersion = 2

// FileName is the bbolt file inside data_dir.
const FileName = "herald.db"

var metaBucket = []byte("meta")

// ErrLocked means another process holds the database.
var ErrLocked = errors.New("the database is in use by another Herald process")

// Open opens (creating if needed) data_dir/herald.db, waiting at most timeout
// for the file lock.
func Open(dataDir string, timeout time.Duration) (*bolt.DB, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	// A truncated or overwritten file must stop start-up with a clear line,
	// not crash inside bbolt's mmap (SIGBUS) or panic later in a worker:
	// check the meta pages and size first, open with faults turned into
	// errors, then run the consistency check before anything writes. The
	// page walk and the consistency check read every page; they are skipped
	// when the last shutdown was clean and nothing touched the file since
	// (clean.go).
	//
	// A Herald already running may be writing the file: its pages are then
	// not consistent to a reader outside its transactions, and the checks
	// would call a healthy file damaged. Hold a shared lock (which its
	// exclusive one refuses) across them, released just before bolt.Open
	// takes the exclusive lock.
	clean, err := checkUnlocked(dataDir, path, timeout)
	if err != nil {
		return nil, err
	}
	var db *bolt.DB
	err = guard(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
		return err
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		if errors.Is(err, ErrDamaged) {
			return nil, err
		}
		if errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrVersionMismatch) || errors.Is(err, bolt.ErrChecksum) {
			return nil, &DamagedError{Path: path, Problem: err.Error()}
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !clean {
		if err := Check(db); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := guard(path, func() error { return db.Update(migrate) }); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// checkUnlocked runs Open's checks under a shared lock on the file (see
// Open), and reports whether the clean-shutdown marker let them skip the
// page walk and the consistency check.
func checkUnlocked(dataDir, path string, timeout time.Duration) (clean bool, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		// A new database (bbolt creates it): a marker left beside a
		// removed file goes too.
		_, err := takeCleanMarker(dataDir, path)
		return false, err
	}
	if err != nil {
		return false, err
	}
	defer f.Close() // releases the lock
	ok, err := lockShared(f, timeout)
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok {
		return false, fmt.Errorf("%s: %w", path, ErrLocked)
	}
	if clean, err = takeCleanMarker(dataDir, path); err != nil {
		return false, err
	}
	return clean, checkMeta(path, !clean)
}

func migrate(tx *bolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(metaBucket)
	if err != nil {
		return err
	}
	v := b.Get([]byte("schema_version"))
	switch {
	case v == nil:
		// A new database: it starts recording the signing keys it is
		// used with (issued.go); a database without that record was
		// made by Herald 0.1 and adopts the keys next to it once.
		if _, err := tx.CreateBucket(issuedBucket); err != nil {
			return err
		}
		return b.Put([]byte("schema_version"), U64(SchemaVersion))
	case binary.BigEndian.Uint64(v) > SchemaVersion:
		return fmt.Errorf("database schema version %d is newer than this Herald understands (%d)", binary.BigEndian.Uint64(v), SchemaVersion)
	}
	// Migrations from older versions go here.
	if binary.BigEndian.Uint64(v) < 2 {
		// 1 -> 2: the invites package builds its indexes (see SchemaVersion).
		return b.Put([]byte("schema_version"), U64(SchemaVersion))
	}
	return nil
}

// Version reads the recorded schema version.
func Version(db *bolt.DB) (uint64, error) {
	var v uint64
	err := db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(metaBucket).Get([]byte("schema_version"))
		if raw == nil {
			return errors.New("no schema version recorded")
		}
		v = binary.BigEndian.Uint64(raw)
		return nil
	})
	return v, err
}

// Buckets creates the named buckets (nested paths not supported) in one update.
func Buckets(db *bolt.DB, names ...[]byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, n := range names {
			if _, err := tx.CreateBucketIfNotExists(n); err != nil {
				return fmt.Errorf("create bucket %s: %w", n, err)
			}
		}
		return nil
	})
}

// U64 encodes v big-endian, so keys sort numerically under a cursor.
func U64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// ParseU64 decodes a key or value written by U64 (0 when b is not 8 bytes
// long).
func ParseU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// TimeKey encodes t as fixed-width big-endian unix nanoseconds followed by suffix.
func TimeKey(t time.Time, suffix []byte) []byte {
	b := make([]byte, 8, 8+len(suffix))
	binary.BigEndian.PutUint64(b, uint64(t.UnixNano()))
	return append(b, suffix...)
}

// Descending yields, highest first, the IDs of b's keys that are prefix
// followed by an 8-byte big-endian ID (U64): newest first, for an index of
// value+NUL+ID keys or, with a nil prefix, a bucket keyed by ID. Keys with the
// prefix and another length are skipped. Use it inside the transaction of b.
func Descending(b *bolt.Bucket, prefix []byte) iter.Seq[uint64] {
	return DescendingBefore(b, prefix, 0)
}

// DescendingBefore is Descending from the highest ID below before (0: no
// bound), reached with one Seek: a page of a list after the one shown does
// not step over what was already shown.
func DescendingBefore(b *bolt.Bucket, prefix []byte, before uint64) iter.Seq[uint64] {
	return func(yield func(uint64) bool) {
		c := b.Cursor()
		// Seek to prefix+before, or past every prefix+ID key, then step back.
		seek := append(append([]byte{}, prefix...), U64(before)...)
		if before == 0 {
			seek = append(append([]byte{}, prefix...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		}
		k, _ := c.Seek(seek)
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
			if len(k) != len(prefix)+8 {
				continue
			}
			if !yield(binary.BigEndian.Uint64(k[len(prefix):])) {
				return
			}
		}
	}
}

// Copy returns a copy of b (bbolt's slices are valid only inside the transaction).
func Copy(b []byte) []byte {
	if b == nil {
		return nil
	}
	c := make([]byte, len(b))
	copy(c, b)
	return c
}
