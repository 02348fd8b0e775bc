package store

import (
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Helpers the admin console needs (package admin, through internal/server).

// ErrScrubBusy means read transactions stayed open for the whole of Scrub's
// patience, so freed pages could not be overwritten safely.
var ErrScrubBusy = errors.New("store: read transactions kept the freed pages in use")

// Scrub overwrites every free page of the file with zeros. bbolt writes a
// changed page elsewhere and leaves the old copy in the file until the page is
// reused, so deleted records stay readable in the raw file; after a
// data-protection erasure, Scrub removes them.
//
// It runs inside a write transaction (so no page is allocated meanwhile) and
// only when no read transaction is open: a reader that began before the
// erasure may still be reading the freed pages. It retries for up to patience.
// It returns how many pages it overwrote.
func Scrub(db *bolt.DB, patience time.Duration) (int, error) {
	deadline := time.Now().Add(patience)
	for {
		n, err := scrubOnce(db)
		if !errors.Is(err, ErrScrubBusy) || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func scrubOnce(db *bolt.DB) (int, error) {
	n := 0
	err := db.Update(func(tx *bolt.Tx) error {
		// Writers are excluded by this transaction; a reader opened from now
		// on sees the latest tree, which references no free page.
		if db.Stats().OpenTxN > 0 {
			return ErrScrubBusy
		}
		var free []int
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil {
				return err
			}
			if p == nil { // the high-water mark
				break
			}
			if p.Type == "free" {
				free = append(free, id)
			}
		}
		if len(free) == 0 {
			return nil
		}
		f, err := os.OpenFile(db.Path(), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		size := db.Info().PageSize
		zero := make([]byte, size)
		for _, id := range free {
			if _, err := f.WriteAt(zero, int64(id)*int64(size)); err != nil {
				f.Close()
				return fmt.Errorf("store: scrub page %d: %w", id, err)
			}
			n++
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	return n, err
}
