package admin

import (
	"crypto/rand"
	"encoding/json"
	"errors"
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

// User is an admin account stored in bbolt.
type User struct {
	Username     string    `json:"username"`
	PasswordHash string    `json:"password_hash"`
	Created      time.Time `json:"created"`
}

type session struct {
	User    string    `json:"user"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// ErrUserExists means an admin account with that name exists already.
var ErrUserExists = errors.New("admin: an account with that name exists already")

// Open creates the admin buckets and the session signing key if missing.
func Open(db *store.DB) error {
	return db.Update(func(tx *store.Tx) error {
		for _, b := range [][]byte{bktUsers, bktSessions, bktMeta, bktAudit} {
			if _, err := tx.Bolt.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("admin: create bucket %s: %w", b, err)
			}
		}
		m := tx.Bolt.Bucket(bktMeta)
		if m.Get([]byte("hmac_key")) == nil {
			k := make([]byte, 32)
			if _, err := rand.Read(k); err != nil {
				return err
			}
			return m.Put([]byte("hmac_key"), k)
		}
		return nil
	})
}

func hmacKey(db *store.DB) ([]byte, error) {
	var k []byte
	err := db.View(func(tx *store.Tx) error {
		k = store.Copy(tx.Bolt.Bucket(bktMeta).Get([]byte("hmac_key")))
		return nil
	})
	if err == nil && len(k) != 32 {
		err = errors.New("admin: no session key stored")
	}
	return k, err
}

// ValidUsername reports whether name is acceptable for an admin account.
func ValidUsername(name string) error {
	if len(name) < 1 || len(name) > 64 {
		return errors.New("admin: a username has 1 to 64 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' || r == '@') {
			return errors.New("admin: a username may use only letters, digits and . _ - @")
		}
	}
	return nil
}

// CreateUser stores a new admin account with an argon2id hash of password.
// With replace, an existing account's password is changed instead of refused.
func CreateUser(db *store.DB, username, password string, replace bool, now time.Time) error {
	if err := ValidUsername(username); err != nil {
		return err
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	if err := Open(db); err != nil {
		return err
	}
	return putUser(db, username, hash, replace, now)
}

// putUser stores an account with an already made hash.
func putUser(db *store.DB, username, hash string, replace bool, now time.Time) error {
	return db.Update(func(tx *store.Tx) error {
		b := tx.Bolt.Bucket(bktUsers)
		if b.Get([]byte(username)) != nil && !replace {
			return ErrUserExists
		}
		raw, _ := json.Marshal(User{Username: username, PasswordHash: hash, Created: now.UTC()})
		return b.Put([]byte(username), raw)
	})
}

// DeleteUser removes an admin account and its sessions.
func DeleteUser(db *store.DB, username string) error {
	return db.Update(func(tx *store.Tx) error {
		b := tx.Bolt.Bucket(bktUsers)
		if b == nil || b.Get([]byte(username)) == nil {
			return fmt.Errorf("admin: no account named %q", username)
		}
		if err := b.Delete([]byte(username)); err != nil {
			return err
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
				return err
			}
		}
		return nil
	})
}

// Users lists the accounts stored in bbolt (not those from config).
func Users(db *store.DB) ([]User, error) {
	var out []User
	err := db.View(func(tx *store.Tx) error {
		b := tx.Bolt.Bucket(bktUsers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return err
			}
			u.PasswordHash = ""
			out = append(out, u)
			return nil
		})
	})
	return out, err
}

func storedHash(db *store.DB, username string) (string, bool) {
	var u User
	found := false
	_ = db.View(func(tx *store.Tx) error {
		if raw := tx.Bolt.Bucket(bktUsers).Get([]byte(username)); raw != nil {
			found = json.Unmarshal(raw, &u) == nil
		}
		return nil
	})
	return u.PasswordHash, found
}
