package admin

import (
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/herald-im/herald/store"
)

// adminStore keeps the console's accounts, sessions, session signing key
// and audit log: bbolt buckets (store_bolt.go) or PostgreSQL tables
// (store_pg.go), chosen from the database's backend (storeFor). Writes run
// inside the caller's transaction; the rules (validation, expiry, the
// audit log's bounds) are the callers', written once.
type adminStore interface {
	// open creates what is missing: buckets, and the session signing key.
	open(db *store.DB) error
	hmacKey(db *store.DB) ([]byte, error)
	// getUser reads an account, with its hash.
	getUser(tx *store.Tx, name string) (User, bool, error)
	putUser(tx *store.Tx, u User) error
	// deleteUser removes the account and its sessions; false if there was none.
	deleteUser(tx *store.Tx, name string) (bool, error)
	// users lists every account in name order.
	users(tx *store.Tx) ([]User, error)
	hasUser(tx *store.Tx) (bool, error)
	// putSession stores s under sid after deleting the sessions expired
	// at now.
	putSession(tx *store.Tx, sid string, s session, now time.Time) error
	getSession(tx *store.Tx, sid string) (session, bool, error)
	deleteSession(tx *store.Tx, sid string) error
	// appendAudit stores e after every earlier entry.
	appendAudit(tx *store.Tx, e AuditEntry) error
	// pruneAudit deletes, oldest first, the entries written before cutoff
	// (none if cutoff is zero) and those beyond the newest max (none if max
	// is 0); it returns how many are left. n is the count the caller keeps
	// (bbolt counts only by walking every page); PostgreSQL keeps its own,
	// shared by the replicas.
	pruneAudit(tx *store.Tx, cutoff time.Time, max, n int) (int, error)
	// sessions lists every stored session (migrate-storage).
	sessions(tx *store.Tx) ([]storedSession, error)
	// setHMACKey replaces the session signing key (migrate-storage).
	setHMACKey(tx *store.Tx, k []byte) error
	// countAudit counts the entries (once, at start-up).
	countAudit(tx *store.Tx) (int, error)
	// audit returns up to limit entries, newest first, after skipping offset.
	audit(tx *store.Tx, limit, offset int) ([]AuditEntry, error)
}

// storeFor is the adminStore of db's backend.
func storeFor(db *store.DB) adminStore {
	if db.Backend() == store.BackendPostgres {
		return pgAdmin{}
	}
	return boltAdmin{}
}

// User is an admin account stored in the database.
type User struct {
	Username     string    `json:"username"`
	PasswordHash string    `json:"password_hash"`
	Created      time.Time `json:"created"`
}

// storedSession is a session with its id.
type storedSession struct {
	ID string
	session
}

type session struct {
	User    string    `json:"user"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// ErrUserExists means an admin account with that name exists already.
var ErrUserExists = errors.New("admin: an account with that name exists already")

// Open creates the admin buckets (on bbolt; the PostgreSQL tables come with
// the migrations) and the session signing key if missing.
func Open(db *store.DB) error { return storeFor(db).open(db) }

func hmacKey(db *store.DB) ([]byte, error) {
	k, err := storeFor(db).hmacKey(db)
	if err == nil && len(k) != 32 {
		err = errors.New("admin: no session key stored")
	}
	return k, err
}

// newHMACKey makes a session signing key.
func newHMACKey() ([]byte, error) {
	k := make([]byte, 32)
	_, err := rand.Read(k)
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
	st := storeFor(db)
	return db.Update(func(tx *store.Tx) error {
		if _, found, err := st.getUser(tx, username); err != nil {
			return err
		} else if found && !replace {
			return ErrUserExists
		}
		return st.putUser(tx, User{Username: username, PasswordHash: hash, Created: now.UTC()})
	})
}

// DeleteUser removes an admin account and its sessions.
func DeleteUser(db *store.DB, username string) error {
	st := storeFor(db)
	return db.Update(func(tx *store.Tx) error {
		found, err := st.deleteUser(tx, username)
		if err == nil && !found {
			err = fmt.Errorf("admin: no account named %q", username)
		}
		return err
	})
}

// Users lists the accounts stored in the database (not those from config).
func Users(db *store.DB) ([]User, error) {
	var out []User
	st := storeFor(db)
	err := db.View(func(tx *store.Tx) error {
		var err error
		out, err = st.users(tx)
		return err
	})
	for i := range out {
		out[i].PasswordHash = ""
	}
	return out, err
}

func storedHash(db *store.DB, username string) (string, bool) {
	var u User
	found := false
	st := storeFor(db)
	_ = db.View(func(tx *store.Tx) error {
		var err error
		u, found, err = st.getUser(tx, username)
		return err
	})
	return u.PasswordHash, found
}
