package identity

import "github.com/herald-im/herald/store"

// Methods the admin console needs (package admin, through internal/server).

// EraseSessions deletes every email validation session for address (with
// its client-secret index entries), for data-protection erasure. It returns
// how many sessions it deleted. The validation mails themselves are the
// outbox's (mailer.Queue.DeleteByRecipient).
func (s *Service) EraseSessions(address string) (int, error) {
	address = normalizeAddress("email", address)
	n := 0
	err := s.db.Update(func(tx *store.Tx) (err error) {
		n, err = s.st.eraseSessions(tx, address)
		return err
	})
	return n, err
}
