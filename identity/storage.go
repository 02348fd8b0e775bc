package identity

import (
	"time"

	"github.com/herald-im/herald/store"
)

// storage is where the identity package keeps its records: bbolt buckets
// (storage_bolt.go) or PostgreSQL tables (storage_pg.go), chosen once by New
// from the database's backend. The feature's rules (validation, expiry,
// errors, HTTP) are written once, over this interface; an implementation
// only reads and writes. Every method taking a *store.Tx works inside the
// caller's transaction, which on PostgreSQL may run more than once: methods
// write only through tx and defer follow-up work to tx.OnCommit.
type storage interface {
	// setup prepares the storage at start (bbolt: the buckets).
	setup(db *store.DB) error

	// Accounts, keyed by sha256 of the token.
	account(tx *store.Tx, key []byte) (*Account, error) // nil: none
	putAccount(tx *store.Tx, key []byte, a *Account) error
	deleteAccount(tx *store.Tx, key []byte) error
	// expireTokens applies the idle-token sweep (ExpireIdleTokens) for an
	// idle lifetime d as of now.
	expireTokens(db *store.DB, now time.Time, d time.Duration) (expired, deleted int, err error)

	// Accepted terms: the set of "policy\x00version" a user accepted.
	terms(tx *store.Tx, userID string) (map[string]bool, error)
	putTerms(tx *store.Tx, userID string, accepted map[string]bool) error

	// Bindings, and the hash index entry of each for the current pepper.
	binding(tx *store.Tx, medium, address string) (*Binding, error) // nil: none
	// bindings returns the bindings of many normalised addresses (nil
	// where unbound), out[i] for refs[i].
	bindings(tx *store.Tx, refs []bindingRef) ([]*Binding, error)
	putBinding(tx *store.Tx, b *Binding) error
	deleteBinding(tx *store.Tx, medium, address string) error
	putHash(tx *store.Tx, h [32]byte, mxid string) error
	deleteHash(tx *store.Tx, h [32]byte) error
	// forgetHashChanges removes every trace of past index changes (the
	// hashes they name) that the storage keeps beside the index itself,
	// for an erasure by the admin console.
	forgetHashChanges(tx *store.Tx) error
	countBindings(db *store.DB) (int, error)
	// prepareImport readies tx for many bindings in one transaction;
	// putHashes writes many hash entries (sorted by hash) at its end.
	prepareImport(tx *store.Tx)
	putHashes(tx *store.Tx, entries []hashEntry) error

	// lookup answers a sha256 lookup for pepper: found(i, mxid) for each
	// bound keys[i] (mxid valid only during the call; keys are distinct and
	// come in ascending order of their first 50 bits), from one consistent
	// view of the pepper and the index. It returns the current pepper, and
	// errWrongPepper (found never called) when it is not pepper, or
	// errNoPepper when there is none yet.
	lookup(db *store.DB, pepper string, keys [][32]byte, found func(i int, mxid []byte)) (string, error)

	// The pepper: nil when there is none yet. setPepper makes p current
	// and, with rebuild, rebuilds the hash index for it.
	pepper(tx *store.Tx) (*pepperInfo, error)
	setPepper(tx *store.Tx, p *pepperInfo, rebuild bool) error

	// Validation sessions and requestToken's de-duplication keys.
	session(tx *store.Tx, sid string) (*Session, error) // nil: none
	putSession(tx *store.Tx, se *Session) error
	sessionKey(tx *store.Tx, key []byte) (string, error) // "": none
	putSessionKey(tx *store.Tx, key []byte, sid string) error
	// deleteSessionsBefore deletes sessions last changed before cutoff,
	// with their keys; eraseSessions those of an email address.
	deleteSessionsBefore(db *store.DB, cutoff time.Time) (int, error)
	eraseSessions(tx *store.Tx, address string) (int, error)

	hasData(tx *store.Tx) (bool, error)

	// scan calls fn for at most limit records of kind (a table name of
	// SumStorage) with a key above after (nil: from the start), in
	// ascending key order; v is the record (see recordOf).
	scan(tx *store.Tx, kind string, after []byte, limit int, fn func(key []byte, v any) error) error
}

// bindingRef names a binding: medium and normalised address.
type bindingRef struct{ Medium, Address string }

// Record kinds, as SumStorage names them.
const (
	kindPepper      = "identity_lookup_pepper"
	kindBindings    = "identity_bindings"
	kindHashes      = "identity_lookup_hashes"
	kindAccounts    = "identity_accounts"
	kindTerms       = "identity_terms"
	kindSessions    = "identity_sessions"
	kindSessionKeys = "identity_session_keys"
)

// recordKinds is every kind, in the order CopyStorage copies them (the
// pepper before the hash index made with it).
var recordKinds = []string{kindPepper, kindBindings, kindHashes, kindAccounts, kindTerms, kindSessions, kindSessionKeys}

// newStorage picks the implementation for db's backend.
func newStorage(db *store.DB) storage {
	if db.Backend() == store.BackendPostgres {
		return &pgStorage{}
	}
	return &boltStorage{}
}
