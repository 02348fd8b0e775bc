package identity

import (
	"bytes"
	"encoding/json"
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
	if cur := tx.Bolt.Bucket(lookupMetaBucket).Get([]byte("pepper")); string(cur) == pepper {
		return Unchanged, nil
	}
	_, err := s.setPepperTx(tx, pepper)
	return Imported, err
}

// BindingImport writes many bindings in one write transaction. bbolt keeps
// every key a transaction adds to a page in one in-memory node until the
// commit, so keys added in random order cost a copy of that node each:
// bindings come in address order, and the hash index entries (random by
// nature) are sorted and written by Close.
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
	tx.Bolt.Bucket(bindingsBucket).FillPercent = 0.9
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
	bk := bi.tx.Bolt.Bucket(bindingsBucket)
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
	bi.idx = append(bi.idx, hashEntry{lookupHashRaw(b.Address, b.Medium, bi.pepper), b.MXID})
	return Imported, nil
}

// Close writes the hash index entries of the bindings added, in key order.
func (bi *BindingImport) Close() error {
	slices.SortFunc(bi.idx, func(a, b hashEntry) int { return bytes.Compare(a.hash[:], b.hash[:]) })
	idx := bi.tx.Bolt.Bucket(lookupHashBucket)
	idx.FillPercent = 0.9
	for _, e := range bi.idx {
		if err := idx.Put(e.hash[:], []byte(e.mxid)); err != nil {
			return err
		}
	}
	bi.idx = nil
	// Too many entries to read back one by one: the next lookup builds the
	// in-memory index again.
	bi.tx.OnCommit(bi.s.bind.index.drop)
	return nil
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
	b := tx.Bolt.Bucket(accountsBucket)
	for _, it := range items {
		a := accts[it.i]
		if raw := b.Get(it.hash); raw != nil {
			var old Account
			if err := json.Unmarshal(raw, &old); err != nil {
				return nil, err
			}
			out[it.i] = Conflict
			if old.UserID == a.UserID {
				out[it.i] = Unchanged
			}
			continue
		}
		raw, _ := json.Marshal(Account{UserID: a.UserID, Created: a.Created.UTC()})
		if err := b.Put(it.hash, raw); err != nil {
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
	b := tx.Bolt.Bucket(termsBucket)
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
func (s *Service) HasData(tx *store.Tx) bool {
	k, _ := tx.Bolt.Bucket(bindingsBucket).Cursor().First()
	if k != nil {
		return true
	}
	k, _ = tx.Bolt.Bucket(accountsBucket).Cursor().First()
	return k != nil
}
