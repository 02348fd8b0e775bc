package identity

import (
	"bytes"
	"slices"
	"time"

	"github.com/herald-im/herald/store"
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
func (s *Service) ImportPepper(tx *store.Tx, pepper string) (ImportOutcome, error) {
	cur, err := s.st.pepper(tx)
	if err != nil {
		return Conflict, err
	}
	if cur != nil && cur.Value == pepper {
		return Unchanged, nil
	}
	_, err = s.setPepperTx(tx, pepper)
	return Imported, err
}

// BindingImport writes many bindings in one write transaction: bindings
// come in address order, and the hash index entries (random by nature) are
// sorted and written together by Close (on bbolt, keys added in random
// order would cost a copy of a page's in-memory node each).
type BindingImport struct {
	s      *Service
	tx     *store.Tx
	pepper string
	idx    []hashEntry
}

type hashEntry struct {
	hash [32]byte
	mxid string
}

// ImportBindings starts a BindingImport in tx. Call ImportPepper first:
// the hash index is written for the current pepper.
func (s *Service) ImportBindings(tx *store.Tx) (*BindingImport, error) {
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return nil, err
	}
	s.st.prepareImport(tx)
	return &BindingImport{s: s, tx: tx, pepper: pepper}, nil
}

// Add stores b with its own times, without running the bind hooks (an
// imported binding delivers nothing: the old server already did). An
// address already bound to the same mxid is Unchanged, to another mxid a
// Conflict.
func (bi *BindingImport) Add(b Binding) (ImportOutcome, error) {
	if b.Medium == "" || b.Address == "" || b.MXID == "" {
		return Conflict, ErrBadBinding
	}
	b.Address = normalizeAddress(b.Medium, b.Address)
	old, err := bi.s.st.binding(bi.tx, b.Medium, b.Address)
	if err != nil {
		return Conflict, err
	}
	if old != nil {
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
	if err := bi.s.st.putBinding(bi.tx, &b); err != nil {
		return Conflict, err
	}
	bi.idx = append(bi.idx, hashEntry{lookupHashRaw(b.Address, b.Medium, bi.pepper), b.MXID})
	return Imported, nil
}

// Close writes the hash index entries of the bindings added, in key order.
func (bi *BindingImport) Close() error {
	slices.SortFunc(bi.idx, func(a, b hashEntry) int { return bytes.Compare(a.hash[:], b.hash[:]) })
	err := bi.s.st.putHashes(bi.tx, bi.idx)
	bi.idx = nil
	return err
}

// ImportedAccount is one access token of another identity server.
type ImportedAccount struct {
	Token, UserID string
	Created       time.Time
}

// ImportAccounts stores access tokens (only their hashes, as for Herald's
// own), in hash order (see BindingImport). A token already stored for the
// same user is Unchanged, for another user a Conflict; out[i] is accts[i]'s.
func (s *Service) ImportAccounts(tx *store.Tx, accts []ImportedAccount) ([]ImportOutcome, error) {
	type item struct {
		hash []byte
		i    int
	}
	items := make([]item, len(accts))
	for i, a := range accts {
		items[i] = item{hashToken(a.Token), i}
	}
	slices.SortFunc(items, func(a, b item) int { return bytes.Compare(a.hash, b.hash) })
	out := make([]ImportOutcome, len(accts))
	for _, it := range items {
		a := accts[it.i]
		old, err := s.st.account(tx, it.hash)
		if err != nil {
			return nil, err
		}
		if old != nil {
			out[it.i] = Conflict
			if old.UserID == a.UserID {
				out[it.i] = Unchanged
			}
			continue
		}
		if err := s.st.putAccount(tx, it.hash, &Account{UserID: a.UserID, Created: a.Created.UTC()}); err != nil {
			return nil, err
		}
		out[it.i] = Imported
	}
	return out, nil
}

// ImportAcceptedTerms records that userID accepted the policy documents at
// urls, as AcceptTerms does. It reports Conflict when no URL is one of
// Herald's configured policies (nothing to record), Unchanged when every
// version was already recorded.
func (s *Service) ImportAcceptedTerms(tx *store.Tx, userID string, urls []string) (ImportOutcome, error) {
	accepted, err := s.st.terms(tx, userID)
	if err != nil {
		return Conflict, err
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
	return Imported, s.st.putTerms(tx, userID, accepted)
}

// HasData reports whether any binding or account is stored.
// A read error counts as data (an import then refuses to go ahead).
func (s *Service) HasData(tx *store.Tx) bool {
	ok, err := s.st.hasData(tx)
	return ok || err != nil
}
