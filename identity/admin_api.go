package identity

import (
	"bytes"
	"encoding/json"

	"github.com/herald-im/herald/store"
)

// Methods the admin console needs (package admin, through internal/server).

// EraseSessions deletes every email validation session for address (with
// its client-secret index entries), for data-protection erasure. It returns
// how many sessions it deleted. The validation mails themselves are the
// outbox's (mailer.Queue.DeleteByRecipient).
func (s *Service) EraseSessions(address string) (int, error) {
	address = normalizeAddress("email", address)
	n := 0
	err := s.db.Update(func(tx *store.Tx) error {
		n = 0
		sessions, keys := tx.Bolt.Bucket(sessionsBucket), tx.Bolt.Bucket(sessionKeysBucket)
		doomed := map[string]bool{}
		err := sessions.ForEach(func(k, v []byte) error {
			var se Session
			if err := json.Unmarshal(v, &se); err != nil {
				return err
			}
			if (se.Medium == "email" || se.Medium == "") && normalizeAddress("email", se.Address) == address {
				doomed[string(k)] = true
			}
			return nil
		})
		if err != nil || len(doomed) == 0 {
			return err
		}
		// The index is keyed by a hash of the client secret and address:
		// find its entries by the session they point at.
		var stale [][]byte
		err = keys.ForEach(func(k, v []byte) error {
			if doomed[string(v)] {
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := keys.Delete(k); err != nil {
				return err
			}
		}
		for sid := range doomed {
			if err := sessions.Delete([]byte(sid)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
