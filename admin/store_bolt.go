package admin

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/herald-im/herald/store"
)

// The admin package's own buckets.
var (
	bktUsers    = []byte("admin_users")    // username -> JSON User
	bktSessions = []byte("admin_sessions") // session id -> JSON session
	bktMeta     = []byte("admin_meta")     // "hmac_key" -> 32 random bytes
	bktAudit    = []byte("admin_audit")    // time (unix ns) + seq -> JSON AuditEntry
)

type boltAdmin struct{}

func (boltAdmin) open(db *store.DB) error {
	return db.Update(func(tx *store.Tx) error {
		for _, b := range [][]byte{bktUsers, bktSessions, bktMeta, bktAudit} {
			if _, err := tx.Bolt.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("admin: create bucket %s: %w", b, err)
			}
		}
		m := tx.Bolt.Bucket(bktMeta)
		if m.Get([]byte("hmac_key")) == nil {
			k, err := newHMACKey()
			if err != nil {
				return err
			}
			return m.Put([]byte("hmac_key"), k)
		}
		return nil
	})
}

func (boltAdmin) hmacKey(db *store.DB) ([]byte, error) {
	var k []byte
	err := db.View(func(tx *store.Tx) error {
		k = store.Copy(tx.Bolt.Bucket(bktMeta).Get([]byte("hmac_key")))
		return nil
	})
	return k, err
}

func (boltAdmin) getUser(tx *store.Tx, name string) (User, bool, error) {
	var u User
	b := tx.Bolt.Bucket(bktUsers)
	if b == nil {
		return u, false, nil
	}
	raw := b.Get([]byte(name))
	if raw == nil {
		return u, false, nil
	}
	err := json.Unmarshal(raw, &u)
	return u, err == nil, err
}

func (boltAdmin) putUser(tx *store.Tx, u User) error {
	raw, _ := json.Marshal(u)
	return tx.Bolt.Bucket(bktUsers).Put([]byte(u.Username), raw)
}

func (boltAdmin) deleteUser(tx *store.Tx, username string) (bool, error) {
	b := tx.Bolt.Bucket(bktUsers)
	if b == nil || b.Get([]byte(username)) == nil {
		return false, nil
	}
	if err := b.Delete([]byte(username)); err != nil {
		return false, err
	}
	s := tx.Bolt.Bucket(bktSessions)
	var drop [][]byte
	_ = s.ForEach(func(k, v []byte) error {
		var ss session
		if json.Unmarshal(v, &ss) == nil && ss.User == username {
			drop = append(drop, store.Copy(k))
		}
		return nil
	})
	for _, k := range drop {
		if err := s.Delete(k); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (boltAdmin) users(tx *store.Tx) ([]User, error) {
	var out []User
	b := tx.Bolt.Bucket(bktUsers)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(_, v []byte) error {
		var u User
		if err := json.Unmarshal(v, &u); err != nil {
			return err
		}
		out = append(out, u)
		return nil
	})
	return out, err
}

func (boltAdmin) hasUser(tx *store.Tx) (bool, error) {
	k, _ := tx.Bolt.Bucket(bktUsers).Cursor().First()
	return k != nil, nil
}

func (boltAdmin) putSession(tx *store.Tx, sid string, s session, now time.Time) error {
	b := tx.Bolt.Bucket(bktSessions)
	// Forget expired sessions while here.
	var old [][]byte
	_ = b.ForEach(func(k, v []byte) error {
		var s session
		if json.Unmarshal(v, &s) != nil || now.After(s.Expires) {
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range old {
		_ = b.Delete(k)
	}
	raw, _ := json.Marshal(s)
	return b.Put([]byte(sid), raw)
}

func (boltAdmin) getSession(tx *store.Tx, sid string) (session, bool, error) {
	var s session
	raw := tx.Bolt.Bucket(bktSessions).Get([]byte(sid))
	if raw == nil {
		return s, false, nil
	}
	err := json.Unmarshal(raw, &s)
	return s, err == nil, err
}

func (boltAdmin) deleteSession(tx *store.Tx, sid string) error {
	return tx.Bolt.Bucket(bktSessions).Delete([]byte(sid))
}

func (boltAdmin) appendAudit(tx *store.Tx, e AuditEntry) error {
	raw, _ := json.Marshal(e)
	b := tx.Bolt.Bucket(bktAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(store.TimeKey(e.At, store.U64(seq)), raw)
}

// pruneAudit deletes the oldest entries while they are older than cutoff or
// more than max. Keys start with the time, so only the entries deleted are
// read.
func (boltAdmin) pruneAudit(tx *store.Tx, cutoff time.Time, max, n int) (int, error) {
	b := tx.Bolt.Bucket(bktAudit)
	var drop [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		old := len(k) >= 8 && !cutoff.IsZero() && int64(binary.BigEndian.Uint64(k[:8])) < cutoff.UnixNano()
		if !old && (max <= 0 || n-len(drop) <= max) {
			break
		}
		drop = append(drop, store.Copy(k))
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return n, err
		}
	}
	return n - len(drop), nil
}

func (boltAdmin) countAudit(tx *store.Tx) (int, error) {
	return tx.Bolt.Bucket(bktAudit).Stats().KeyN, nil
}

func (boltAdmin) audit(tx *store.Tx, limit, offset int) ([]AuditEntry, error) {
	var out []AuditEntry
	c := tx.Bolt.Bucket(bktAudit).Cursor()
	for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
		if offset > 0 {
			offset--
			continue
		}
		var e AuditEntry
		if err := json.NewDecoder(bytes.NewReader(v)).Decode(&e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (boltAdmin) sessions(tx *store.Tx) ([]storedSession, error) {
	var out []storedSession
	err := tx.Bolt.Bucket(bktSessions).ForEach(func(k, v []byte) error {
		var s session
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		out = append(out, storedSession{ID: string(k), session: s})
		return nil
	})
	return out, err
}

func (boltAdmin) setHMACKey(tx *store.Tx, k []byte) error {
	return tx.Bolt.Bucket(bktMeta).Put([]byte("hmac_key"), k)
}
