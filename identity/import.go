package identity

import (
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// What another identity server's data (sydent's) becomes in Herald's
// buckets. Each function works inside the caller's write transaction, so an
// import is one transaction, and reports whether it changed anything, so a
// second import of the same data changes nothing.

// ImportOutcome says what an import function did with one record.
type ImportOutcome int

const (
	Imported  ImportOutcome = iota // written
	Unchanged                      // already there, identical
	Conflict                       // something different is already there; left alone
)

// ImportPepper makes pepper the current lookup pepper (clients of the old
// server may have cached it) unless it already is, and rebuilds the hash
// index for it.
func (s *Service) ImportPepper(tx *bolt.Tx, pepper string) (ImportOutcome, error) {
	if cur := tx.Bucket(lookupMetaBucket).Get([]byte("pepper")); string(cur) == pepper {
		return Unchanged, nil
	}
	_, err := s.setPepperTx(tx, pepper)
	return Imported, err
}

// ImportBinding stores b with its own times, without running the bind hooks
// (an imported binding delivers nothing: the old server already did). An
// address already bound to the same mxid is Unchanged, to another mxid a
// Conflict. Call ImportPepper first: the hash index is written for the
// current pepper.
func (s *Service) ImportBinding(tx *bolt.Tx, b Binding) (ImportOutcome, error) {
	if b.Medium == "" || b.Address == "" || b.MXID == "" {
		return Conflict, ErrBadBinding
	}
	b.Address = normalizeAddress(b.Medium, b.Address)
	bk := tx.Bucket(bindingsBucket)
	key := bindingKey(b.Medium, b.Address)
	if raw := bk.Get(key); raw != nil {
		var old Binding
		if err := json.Unmarshal(raw, &old); err != nil {
			return Conflict, err
		}
		if old.MXID == b.MXID {
			return Unchanged, nil
		}
		return Conflict, nil
	}
	if b.NotBefore.IsZero() {
		b.NotBefore = b.TS
	}
	if b.NotAfter.IsZero() {
		b.NotAfter = b.TS.AddDate(100, 0, 0)
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return Conflict, err
	}
	if err := bk.Put(key, raw); err != nil {
		return Conflict, err
	}
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return Conflict, err
	}
	h := lookupHashRaw(b.Address, b.Medium, pepper)
	return Imported, tx.Bucket(lookupHashBucket).Put(h[:], []byte(b.MXID))
}

// ImportAccount stores an access token of userID (only its hash, as for
// Herald's own tokens). The same token for the same user is Unchanged, for
// another user a Conflict.
func (s *Service) ImportAccount(tx *bolt.Tx, token, userID string, created time.Time) (ImportOutcome, error) {
	b := tx.Bucket(accountsBucket)
	if raw := b.Get(hashToken(token)); raw != nil {
		var a Account
		if err := json.Unmarshal(raw, &a); err != nil {
			return Conflict, err
		}
		if a.UserID == userID {
			return Unchanged, nil
		}
		return Conflict, nil
	}
	raw, _ := json.Marshal(Account{UserID: userID, Created: created.UTC()})
	return Imported, b.Put(hashToken(token), raw)
}

// ImportAcceptedTerms records that userID accepted the policy documents at
// urls, as AcceptTerms does. It reports Conflict when no URL is one of
// Herald's configured policies (nothing to record), Unchanged when every
// version was already recorded.
func (s *Service) ImportAcceptedTerms(tx *bolt.Tx, userID string, urls []string) (ImportOutcome, error) {
	b := tx.Bucket(termsBucket)
	accepted := map[string]bool{}
	if raw := b.Get([]byte(userID)); raw != nil {
		if err := json.Unmarshal(raw, &accepted); err != nil {
			return Conflict, err
		}
	}
	known, added := false, false
	for _, u := range urls {
		for _, pv := range s.acceptURL[u] {
			known = true
			if k := pv.ID + "\x00" + pv.Version; !accepted[k] {
				accepted[k], added = true, true
			}
		}
	}
	switch {
	case !known:
		return Conflict, nil
	case !added:
		return Unchanged, nil
	}
	raw, _ := json.Marshal(accepted)
	return Imported, b.Put([]byte(userID), raw)
}

// HasData reports whether any binding or account is stored.
func (s *Service) HasData(tx *bolt.Tx) bool {
	k, _ := tx.Bucket(bindingsBucket).Cursor().First()
	if k != nil {
		return true
	}
	k, _ = tx.Bucket(accountsBucket).Cursor().First()
	return k != nil
}
