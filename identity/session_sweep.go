package identity

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/herald-im/herald/store"
)

// sessionSweepBatch bounds how many records one write transaction of the
// session sweep looks at, so the sweep never holds bbolt's only writer for
// long whatever the number of sessions.
const sessionSweepBatch = 2000

// DeleteExpiredSessions deletes email validation sessions that expired more
// than one session lifetime ago, and the requestToken de-duplication keys
// that point at sessions no longer stored. An expired session is refused
// anyway; keeping it one more lifetime lets a late submitToken still hear
// "expired" rather than "no such session". Without this sweep every
// requestToken (anonymous on the v1 API) would leave a record for ever. It
// returns how many sessions it deleted.
func (s *Service) DeleteExpiredSessions(now time.Time) (int, error) {
	if s.val == nil || s.val.opts.SessionLifetime <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-2 * s.val.opts.SessionLifetime)
	deleted := 0
	// Sessions, a batch per transaction, resuming after the last key seen.
	var after []byte
	for done := false; !done; {
		err := s.db.Update(func(tx *store.Tx) error {
			b := tx.Bolt.Bucket(sessionsBucket)
			c := b.Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			var old [][]byte
			n := 0
			for ; k != nil && n < sessionSweepBatch; k, v = c.Next() {
				n++
				after = append(after[:0], k...)
				var se Session
				if json.Unmarshal(v, &se) != nil || se.Updated.Before(cutoff) {
					old = append(old, append([]byte(nil), k...))
				}
			}
			done = k == nil
			for _, k := range old {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			deleted += len(old)
			return nil
		})
		if err != nil {
			return deleted, err
		}
	}
	if deleted == 0 {
		return 0, nil
	}
	// De-duplication keys whose session is gone (the key is a hash of the
	// client secret, which Herald does not keep, so it is found this way).
	after = nil
	for done := false; !done; {
		err := s.db.Update(func(tx *store.Tx) error {
			sessions, b := tx.Bolt.Bucket(sessionsBucket), tx.Bolt.Bucket(sessionKeysBucket)
			c := b.Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			var gone [][]byte
			for n := 0; k != nil && n < sessionSweepBatch; k, v = c.Next() {
				n++
				after = append(after[:0], k...)
				if sessions.Get(v) == nil {
					gone = append(gone, append([]byte(nil), k...))
				}
			}
			done = k == nil
			for _, k := range gone {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}
