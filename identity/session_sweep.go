package identity

import "time"

// DeleteExpiredSessions deletes email validation sessions that expired more
// than one session lifetime ago, and the requestToken de-duplication keys
// that point at sessions no longer stored. An expired session is refused
// anyway; keeping it one more lifetime lets a late submitToken still hear
// "expired" rather than "no such session". Without this sweep every
// requestToken (anonymous on the v1 API) would leave a record for ever. It
// returns how many sessions it deleted. It works in batches, one write
// transaction each, so it never holds the database's writers for long.
func (s *Service) DeleteExpiredSessions(now time.Time) (int, error) {
	if s.val == nil || s.val.opts.SessionLifetime <= 0 {
		return 0, nil
	}
	return s.st.deleteSessionsBefore(s.db, now.Add(-2*s.val.opts.SessionLifetime))
}
