package identity

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// The identity buckets in the bbolt file:
//
//	identity_accounts:     sha256(token) -> JSON Account
//	identity_terms:        user id -> JSON {"policy\x00version": true}
//	identity_bindings:     medium 0x00 address -> JSON Binding
//	identity_lookup_hash:  sha256(address " " medium " " pepper) (32 bytes) -> mxid,
//	                       for the current pepper only; rebuilt when it rotates
//	identity_lookup_meta:  "pepper" -> pepper, "pepper_created" -> unix ns
//	identity_sessions:     sid -> JSON Session
//	identity_session_keys: sha256(client_secret 0 medium 0 address) -> sid
//
// A v2 lookup costs one probe of the in-memory copy of the hash index
// (lookupfilter.go) per requested hash, or one B+tree seek while that copy
// is being built, whatever the number of bindings stored.
var (
	accountsBucket    = []byte("identity_accounts")
	termsBucket       = []byte("identity_terms")
	bindingsBucket    = []byte("identity_bindings")
	lookupHashBucket  = []byte("identity_lookup_hash")
	lookupMetaBucket  = []byte("identity_lookup_meta")
	sessionsBucket    = []byte("identity_sessions")
	sessionKeysBucket = []byte("identity_session_keys")
)

// allBuckets lists every bucket the identity package owns; setup creates
// them all.
var allBuckets = [][]byte{
	accountsBucket, termsBucket,
	sessionsBucket, sessionKeysBucket,
	bindingsBucket, lookupHashBucket, lookupMetaBucket,
}

// boltStorage keeps the identity records in the bbolt file.
type boltStorage struct {
	db *store.DB
	// index answers hashed lookups from memory (lookupfilter.go).
	index lookupIndex
}

func (st *boltStorage) setup(db *store.DB) error {
	st.db = db
	return db.Update(func(tx *store.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.Bolt.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

func getJSON[T any](b *bolt.Bucket, key []byte) (*T, error) {
	raw := b.Get(key)
	if raw == nil {
		return nil, nil
	}
	v := new(T)
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, err
	}
	return v, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// ---- accounts and terms ----

func (st *boltStorage) account(tx *store.Tx, key []byte) (*Account, error) {
	return getJSON[Account](tx.Bolt.Bucket(accountsBucket), key)
}

func (st *boltStorage) putAccount(tx *store.Tx, key []byte, a *Account) error {
	return putJSON(tx.Bolt.Bucket(accountsBucket), key, a)
}

func (st *boltStorage) deleteAccount(tx *store.Tx, key []byte) error {
	return tx.Bolt.Bucket(accountsBucket).Delete(key)
}

func (st *boltStorage) expireTokens(db *store.DB, now time.Time, d time.Duration) (expired, deleted int, err error) {
	err = db.Update(func(tx *store.Tx) error {
		expired, deleted = 0, 0
		b := tx.Bolt.Bucket(accountsBucket)
		// Changes are collected first: bbolt cursors must not walk a bucket
		// that is being written.
		var drop [][]byte
		put := map[string][]byte{}
		err := b.ForEach(func(k, raw []byte) error {
			var a Account
			if err := json.Unmarshal(raw, &a); err != nil {
				return err
			}
			switch {
			case !a.Expired.IsZero():
				if now.Sub(a.Expired) > d {
					drop = append(drop, store.Copy(k))
					deleted++
				}
				return nil
			case a.LastUsed.IsZero():
				a.LastUsed = now
			case now.Sub(a.LastUsed) > d:
				a = Account{Created: a.Created, LastUsed: a.LastUsed, Expired: now}
				expired++
			default:
				return nil
			}
			raw, err := json.Marshal(a)
			put[string(k)] = raw
			return err
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for k, raw := range put {
			if err := b.Put([]byte(k), raw); err != nil {
				return err
			}
		}
		return nil
	})
	return expired, deleted, err
}

func (st *boltStorage) terms(tx *store.Tx, userID string) (map[string]bool, error) {
	accepted := map[string]bool{}
	if raw := tx.Bolt.Bucket(termsBucket).Get([]byte(userID)); raw != nil {
		if err := json.Unmarshal(raw, &accepted); err != nil {
			return nil, err
		}
	}
	return accepted, nil
}

func (st *boltStorage) putTerms(tx *store.Tx, userID string, accepted map[string]bool) error {
	return putJSON(tx.Bolt.Bucket(termsBucket), []byte(userID), accepted)
}

// ---- bindings ----

func bindingKey(medium, address string) []byte {
	k := make([]byte, 0, len(medium)+1+len(address))
	k = append(k, medium...)
	k = append(k, 0)
	return append(k, address...)
}

func (st *boltStorage) binding(tx *store.Tx, medium, address string) (*Binding, error) {
	return getJSON[Binding](tx.Bolt.Bucket(bindingsBucket), bindingKey(medium, address))
}

func (st *boltStorage) bindings(tx *store.Tx, refs []bindingRef) ([]*Binding, error) {
	out := make([]*Binding, len(refs))
	for i, r := range refs {
		b, err := st.binding(tx, r.Medium, r.Address)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (st *boltStorage) putBinding(tx *store.Tx, b *Binding) error {
	return putJSON(tx.Bolt.Bucket(bindingsBucket), bindingKey(b.Medium, b.Address), b)
}

func (st *boltStorage) deleteBinding(tx *store.Tx, medium, address string) error {
	return tx.Bolt.Bucket(bindingsBucket).Delete(bindingKey(medium, address))
}

func (st *boltStorage) putHash(tx *store.Tx, h [32]byte, mxid string) error {
	if err := tx.Bolt.Bucket(lookupHashBucket).Put(h[:], []byte(mxid)); err != nil {
		return err
	}
	// Lookups answer from the in-memory index: it learns of the binding
	// when it is committed, before PutBinding's caller answers.
	tx.OnCommit(func() { st.index.sync(st.db, h) })
	return nil
}

// forgetHashChanges: bbolt keeps no log of index changes.
func (st *boltStorage) forgetHashChanges(*store.Tx) error { return nil }

func (st *boltStorage) deleteHash(tx *store.Tx, h [32]byte) error {
	if err := tx.Bolt.Bucket(lookupHashBucket).Delete(h[:]); err != nil {
		return err
	}
	tx.OnCommit(func() { st.index.sync(st.db, h) })
	return nil
}

// countBindings reads the bucket's pages, not its records: bbolt keeps each
// page's key count.
func (st *boltStorage) countBindings(db *store.DB) (int, error) {
	var n int
	err := db.View(func(tx *store.Tx) error {
		n = tx.Bolt.Bucket(bindingsBucket).Stats().KeyN
		return nil
	})
	return n, err
}

// prepareImport fills pages further: bbolt keeps every key a transaction
// adds to a page in one in-memory node until the commit, so bindings come in
// address order and the hash entries (random by nature) sorted at the end.
func (st *boltStorage) prepareImport(tx *store.Tx) {
	tx.Bolt.Bucket(bindingsBucket).FillPercent = 0.9
}

func (st *boltStorage) putHashes(tx *store.Tx, entries []hashEntry) error {
	idx := tx.Bolt.Bucket(lookupHashBucket)
	idx.FillPercent = 0.9
	for _, e := range entries {
		if err := idx.Put(e.hash[:], []byte(e.mxid)); err != nil {
			return err
		}
	}
	// Too many entries to read back one by one: the next lookup builds the
	// in-memory index again.
	tx.OnCommit(st.index.drop)
	return nil
}

// lookup answers from the in-memory index when it is built for pepper, and
// seeks every hash in the bucket otherwise (then builds the index, after its
// own read transaction).
func (st *boltStorage) lookup(db *store.DB, pepper string, keys [][32]byte, found func(i int, mxid []byte)) (string, error) {
	var current string
	build := false
	err := db.View(func(tx *store.Tx) error {
		// Compare with the pepper of this very snapshot: the index matches it.
		p := tx.Bolt.Bucket(lookupMetaBucket).Get([]byte("pepper"))
		if p == nil {
			return errNoPepper
		}
		current = string(p)
		if pepper != current {
			return errWrongPepper
		}
		get, done := st.index.reader(current)
		defer done()
		build = get == nil
		// keys come in (nearly) key order: the seeks go forward.
		c := tx.Bolt.Bucket(lookupHashBucket).Cursor()
		for i := range keys {
			key := keys[i][:]
			if get != nil {
				if v := get(key); v != nil {
					found(i, v)
				}
				continue
			}
			if k, v := c.Seek(key); v != nil && bytes.Equal(k, key) {
				found(i, v)
			}
		}
		return nil
	})
	if err == nil && build {
		// The index was not built for this pepper: this lookup builds it
		// (the others seek meanwhile).
		if berr := st.index.build(st.db); berr != nil {
			return current, fmt.Errorf("%w: %v", errIndexNotBuilt, berr)
		}
	}
	return current, err
}

// errIndexNotBuilt wraps a failure to build the in-memory index after a
// lookup that was answered anyway.
var errIndexNotBuilt = errors.New("lookup index not built")

// ---- pepper ----

func (st *boltStorage) pepper(tx *store.Tx) (*pepperInfo, error) {
	m := tx.Bolt.Bucket(lookupMetaBucket)
	if m == nil {
		return nil, nil // a file New never opened (a copy's source)
	}
	v := m.Get([]byte("pepper"))
	if v == nil {
		return nil, nil
	}
	p := &pepperInfo{Value: string(v)}
	if ts := m.Get([]byte("pepper_created")); len(ts) == 8 {
		p.Created = time.Unix(0, int64(binary.BigEndian.Uint64(ts))).UTC()
	}
	return p, nil
}

func (st *boltStorage) setPepper(tx *store.Tx, p *pepperInfo, rebuild bool) error {
	m := tx.Bolt.Bucket(lookupMetaBucket)
	if err := m.Put([]byte("pepper"), []byte(p.Value)); err != nil {
		return err
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(p.Created.UnixNano()))
	if err := m.Put([]byte("pepper_created"), ts[:]); err != nil {
		return err
	}
	// The index is built again, for this pepper, by the next lookup.
	tx.OnCommit(st.index.drop)
	if !rebuild {
		return nil
	}
	if err := tx.Bolt.DeleteBucket(lookupHashBucket); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
		return err
	}
	idx, err := tx.Bolt.CreateBucket(lookupHashBucket)
	if err != nil {
		return err
	}
	idx.FillPercent = 0.9
	err = tx.Bolt.Bucket(bindingsBucket).ForEach(func(_, v []byte) error {
		var b Binding
		if err := json.Unmarshal(v, &b); err != nil {
			return err
		}
		h := lookupHashRaw(b.Address, b.Medium, p.Value)
		return idx.Put(h[:], []byte(b.MXID))
	})
	if err != nil {
		return fmt.Errorf("rebuild lookup index: %w", err)
	}
	return nil
}

// ---- sessions ----

func (st *boltStorage) session(tx *store.Tx, sid string) (*Session, error) {
	return getJSON[Session](tx.Bolt.Bucket(sessionsBucket), []byte(sid))
}

func (st *boltStorage) putSession(tx *store.Tx, se *Session) error {
	return putJSON(tx.Bolt.Bucket(sessionsBucket), []byte(se.SID), se)
}

func (st *boltStorage) sessionKey(tx *store.Tx, key []byte) (string, error) {
	return string(tx.Bolt.Bucket(sessionKeysBucket).Get(key)), nil
}

func (st *boltStorage) putSessionKey(tx *store.Tx, key []byte, sid string) error {
	return tx.Bolt.Bucket(sessionKeysBucket).Put(key, []byte(sid))
}

// sessionSweepBatch bounds how many records one write transaction of the
// session sweep looks at, so the sweep never holds bbolt's only writer for
// long whatever the number of sessions.
const sessionSweepBatch = 2000

func (st *boltStorage) deleteSessionsBefore(db *store.DB, cutoff time.Time) (int, error) {
	deleted := 0
	// Sessions, a batch per transaction, resuming after the last key seen.
	var after []byte
	for done := false; !done; {
		err := db.Update(func(tx *store.Tx) error {
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
		err := db.Update(func(tx *store.Tx) error {
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

func (st *boltStorage) eraseSessions(tx *store.Tx, address string) (int, error) {
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
		return 0, err
	}
	// The index is keyed by a hash of the client secret and address: find
	// its entries by the session they point at.
	var stale [][]byte
	err = keys.ForEach(func(k, v []byte) error {
		if doomed[string(v)] {
			stale = append(stale, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range stale {
		if err := keys.Delete(k); err != nil {
			return 0, err
		}
	}
	n := 0
	for sid := range doomed {
		if err := sessions.Delete([]byte(sid)); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

func (st *boltStorage) hasData(tx *store.Tx) (bool, error) {
	if k, _ := tx.Bolt.Bucket(bindingsBucket).Cursor().First(); k != nil {
		return true, nil
	}
	k, _ := tx.Bolt.Bucket(accountsBucket).Cursor().First()
	return k != nil, nil
}

// ---- copy ----

func (st *boltStorage) scan(tx *store.Tx, kind string, after []byte, limit int, fn func(key []byte, v any) error) error {
	if kind == kindPepper {
		if after != nil {
			return nil
		}
		p, err := st.pepper(tx)
		if err != nil || p == nil {
			return err
		}
		return fn([]byte("pepper"), p)
	}
	bucket := map[string][]byte{
		kindBindings: bindingsBucket, kindHashes: lookupHashBucket, kindAccounts: accountsBucket,
		kindTerms: termsBucket, kindSessions: sessionsBucket, kindSessionKeys: sessionKeysBucket,
	}[kind]
	if bucket == nil {
		return fmt.Errorf("identity: unknown record kind %q", kind)
	}
	b := tx.Bolt.Bucket(bucket)
	if b == nil {
		return nil // a file New never opened (a copy's source)
	}
	c := b.Cursor()
	k, v := c.First()
	if after != nil {
		if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	}
	for n := 0; k != nil && n < limit; k, v = c.Next() {
		n++
		var rec any
		switch kind {
		case kindBindings:
			var b Binding
			if err := json.Unmarshal(v, &b); err != nil {
				return err
			}
			rec = b
		case kindAccounts:
			var a Account
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			rec = a
		case kindTerms:
			m := map[string]bool{}
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			rec = m
		case kindSessions:
			var se Session
			if err := json.Unmarshal(v, &se); err != nil {
				return err
			}
			rec = se
		default: // hashes -> mxid, session keys -> sid
			rec = string(v)
		}
		if err := fn(store.Copy(k), rec); err != nil {
			return err
		}
	}
	return nil
}
