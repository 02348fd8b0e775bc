package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// Bindings and the hashed-lookup index.
//
//	identity_bindings:    medium 0x00 address -> JSON Binding
//	identity_lookup_hash: sha256(address " " medium " " pepper) (32 bytes) -> mxid,
//	                      for the current pepper only; rebuilt when it rotates
//	identity_lookup_meta: "pepper" -> pepper, "pepper_created" -> unix ns
//
// A v2 lookup therefore costs one probe of the in-memory copy of the hash
// index (lookupfilter.go) per requested hash, or one B+tree seek while that
// copy is being built, whatever the number of bindings stored.
var (
	bindingsBucket   = []byte("identity_bindings")
	lookupHashBucket = []byte("identity_lookup_hash")
	lookupMetaBucket = []byte("identity_lookup_meta")
)

// Binding is an address bound to a Matrix ID. Address is normalised
// (NormalizeEmail for email).
type Binding struct {
	Medium    string    `json:"medium"`
	Address   string    `json:"address"`
	MXID      string    `json:"mxid"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	TS        time.Time `json:"ts"`
}

// BindHook runs inside the transaction that stores a binding (PutBinding);
// an error aborts the whole transaction.
type BindHook func(tx *store.Tx, b Binding) error

// bindState is the Service's mutable state for bindings and lookups.
type bindState struct {
	hooksMu sync.RWMutex
	hooks   []BindHook

	rotateMu sync.Mutex // serialises pepper rotation
	pepper   atomic.Pointer[pepperInfo]

	// index answers hashed lookups from memory (lookupfilter.go).
	index lookupIndex
}

type pepperInfo struct {
	Value   string
	Created time.Time
}

// ErrBadBinding means a binding lacks a medium, address or mxid.
var ErrBadBinding = errors.New("identity: binding needs medium, address and mxid")

// DB is the bbolt database the identity buckets live in.
func (s *Service) DB() *store.DB { return s.db }

// OnBind registers hook to run inside every PutBinding transaction (the
// invites package resolves pending invites there). Register hooks at start-up.
func (s *Service) OnBind(hook BindHook) {
	s.bind.hooksMu.Lock()
	s.bind.hooks = append(s.bind.hooks, hook)
	s.bind.hooksMu.Unlock()
}

func bindingKey(medium, address string) []byte {
	k := make([]byte, 0, len(medium)+1+len(address))
	k = append(k, medium...)
	k = append(k, 0)
	return append(k, address...)
}

// normalizeAddress normalises email addresses; other media are kept as given.
func normalizeAddress(medium, address string) string {
	if medium == "email" {
		if n, err := NormalizeEmail(address); err == nil {
			return n
		}
	}
	return address
}

// LookupHash is the spec's sha256 lookup form: unpadded URL-safe base64 of
// sha256("address medium pepper").
func LookupHash(address, medium, pepper string) string {
	h := lookupHashRaw(address, medium, pepper)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func lookupHashRaw(address, medium, pepper string) [32]byte {
	return sha256.Sum256([]byte(address + " " + medium + " " + pepper))
}

// PutBinding stores b (replacing any binding of the same address) inside the
// caller's write transaction, keeps the lookup index right, and runs every
// registered bind hook in the same transaction. Zero times default to now
// (TS, NotBefore) and 100 years on (NotAfter).
func (s *Service) PutBinding(tx *store.Tx, b Binding) error {
	if b.Medium == "" || b.Address == "" || b.MXID == "" {
		return ErrBadBinding
	}
	b.Address = normalizeAddress(b.Medium, b.Address)
	now := s.opts.Now().UTC()
	if b.TS.IsZero() {
		b.TS = now
	}
	if b.NotBefore.IsZero() {
		b.NotBefore = b.TS
	}
	if b.NotAfter.IsZero() {
		b.NotAfter = b.TS.AddDate(100, 0, 0)
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return err
	}
	if err := tx.Bolt.Bucket(bindingsBucket).Put(bindingKey(b.Medium, b.Address), raw); err != nil {
		return err
	}
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return err
	}
	h := lookupHashRaw(b.Address, b.Medium, pepper)
	if err := tx.Bolt.Bucket(lookupHashBucket).Put(h[:], []byte(b.MXID)); err != nil {
		return err
	}
	// Lookups answer from the in-memory index: it learns of the binding
	// when it is committed, before PutBinding's caller answers.
	tx.OnCommit(func() { s.bind.index.sync(s.db, h) })
	s.bind.hooksMu.RLock()
	hooks := append([]BindHook(nil), s.bind.hooks...)
	s.bind.hooksMu.RUnlock()
	for _, hook := range hooks {
		if err := hook(tx, b); err != nil {
			return err
		}
	}
	return nil
}

// DeleteBinding removes the binding of address (if any) inside the caller's
// write transaction.
func (s *Service) DeleteBinding(tx *store.Tx, medium, address string) error {
	address = normalizeAddress(medium, address)
	if err := tx.Bolt.Bucket(bindingsBucket).Delete(bindingKey(medium, address)); err != nil {
		return err
	}
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return err
	}
	h := lookupHashRaw(address, medium, pepper)
	if err := tx.Bolt.Bucket(lookupHashBucket).Delete(h[:]); err != nil {
		return err
	}
	tx.OnCommit(func() { s.bind.index.sync(s.db, h) })
	return nil
}

// BindingFor returns the binding of address, or nil if it is unbound.
func (s *Service) BindingFor(medium, address string) (*Binding, error) {
	var b *Binding
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		b, err = s.BindingTx(tx, medium, address)
		return err
	})
	return b, err
}

// BindingTx is BindingFor inside the caller's transaction.
func (s *Service) BindingTx(tx *store.Tx, medium, address string) (*Binding, error) {
	raw := tx.Bolt.Bucket(bindingsBucket).Get(bindingKey(medium, normalizeAddress(medium, address)))
	if raw == nil {
		return nil, nil
	}
	b := new(Binding)
	if err := json.Unmarshal(raw, b); err != nil {
		return nil, err
	}
	return b, nil
}

// Bindings calls fn for every binding, in key order, until fn returns false.
func (s *Service) Bindings(fn func(Binding) bool) error {
	return s.db.View(func(tx *store.Tx) error {
		return tx.Bolt.Bucket(bindingsBucket).ForEach(func(_, v []byte) error {
			var b Binding
			if err := json.Unmarshal(v, &b); err != nil {
				return err
			}
			if !fn(b) {
				return errStop
			}
			return nil
		})
	})
}

var errStop = errors.New("stop")

// SignedAssociation is the spec's signed 3PID association for b: {address,
// medium, mxid, not_before, not_after, ts, signatures}, times in
// milliseconds, signed with Herald's current long-term key.
func (s *Service) SignedAssociation(b Binding) (map[string]json.RawMessage, error) {
	if s.opts.Ring == nil {
		return nil, errors.New("identity: no signing key ring configured")
	}
	return s.opts.Ring.Sign(map[string]any{
		"address":    b.Address,
		"medium":     b.Medium,
		"mxid":       b.MXID,
		"not_before": b.NotBefore.UnixMilli(),
		"not_after":  b.NotAfter.UnixMilli(),
		"ts":         b.TS.UnixMilli(),
	})
}

// ---- pepper ----

func newPepper() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b) // 32 URL-safe characters
}

// pepperTx reads the current pepper inside tx, creating one if there is none
// (only possible in a write transaction).
func (s *Service) pepperTx(tx *store.Tx) (string, error) {
	m := tx.Bolt.Bucket(lookupMetaBucket)
	if p := m.Get([]byte("pepper")); p != nil {
		return string(p), nil
	}
	if !tx.Writable() {
		return "", errNoPepper
	}
	p, err := s.setPepperTx(tx, newPepper())
	return p.Value, err
}

var errNoPepper = errors.New("identity: no lookup pepper yet")

// setPepperTx makes pepper current and rebuilds the hash index for it.
func (s *Service) setPepperTx(tx *store.Tx, pepper string) (*pepperInfo, error) {
	now := s.opts.Now().UTC()
	m := tx.Bolt.Bucket(lookupMetaBucket)
	if err := m.Put([]byte("pepper"), []byte(pepper)); err != nil {
		return nil, err
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(now.UnixNano()))
	if err := m.Put([]byte("pepper_created"), ts[:]); err != nil {
		return nil, err
	}
	if err := tx.Bolt.DeleteBucket(lookupHashBucket); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
		return nil, err
	}
	idx, err := tx.Bolt.CreateBucket(lookupHashBucket)
	if err != nil {
		return nil, err
	}
	idx.FillPercent = 0.9
	err = tx.Bolt.Bucket(bindingsBucket).ForEach(func(_, v []byte) error {
		var b Binding
		if err := json.Unmarshal(v, &b); err != nil {
			return err
		}
		h := lookupHashRaw(b.Address, b.Medium, pepper)
		return idx.Put(h[:], []byte(b.MXID))
	})
	if err != nil {
		return nil, fmt.Errorf("rebuild lookup index: %w", err)
	}
	p := &pepperInfo{Value: pepper, Created: now}
	// Publish only after commit: the caller does that through OnCommit.
	tx.OnCommit(func() {
		s.bind.pepper.Store(p)
		s.bind.index.drop() // built again, for this pepper, by the next lookup
	})
	return p, nil
}

// Pepper returns the current lookup pepper and when it was made, creating
// one on first use.
func (s *Service) Pepper() (string, time.Time, error) {
	if p := s.bind.pepper.Load(); p != nil {
		return p.Value, p.Created, nil
	}
	var p pepperInfo
	err := s.db.View(func(tx *store.Tx) error {
		m := tx.Bolt.Bucket(lookupMetaBucket)
		if v := m.Get([]byte("pepper")); v != nil {
			p.Value = string(v)
			if ts := m.Get([]byte("pepper_created")); len(ts) == 8 {
				p.Created = time.Unix(0, int64(binary.BigEndian.Uint64(ts))).UTC()
			}
		}
		return nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	if p.Value == "" {
		s.bind.rotateMu.Lock()
		defer s.bind.rotateMu.Unlock()
		if cur := s.bind.pepper.Load(); cur != nil {
			return cur.Value, cur.Created, nil
		}
		err := s.db.Update(func(tx *store.Tx) error {
			v, err := s.pepperTx(tx)
			p.Value = v
			return err
		})
		if err != nil {
			return "", time.Time{}, err
		}
		if cur := s.bind.pepper.Load(); cur != nil {
			return cur.Value, cur.Created, nil
		}
		return p.Value, s.opts.Now().UTC(), nil
	}
	s.bind.pepper.Store(&p)
	return p.Value, p.Created, nil
}

// RotatePepper replaces the lookup pepper with a fresh random one and
// rebuilds the hash index; lookups with the old pepper get M_INVALID_PEPPER.
func (s *Service) RotatePepper() error {
	return s.setPepper(newPepper())
}

// SetPepper makes pepper current (tests use the spec's "matrixrocks").
func (s *Service) SetPepper(pepper string) error {
	if pepper == "" {
		return errors.New("identity: empty pepper")
	}
	return s.setPepper(pepper)
}

func (s *Service) setPepper(pepper string) error {
	s.bind.rotateMu.Lock()
	defer s.bind.rotateMu.Unlock()
	err := s.db.Update(func(tx *store.Tx) error {
		_, err := s.setPepperTx(tx, pepper)
		return err
	})
	if err == nil {
		s.opts.Log.Info("lookup pepper rotated")
	}
	return err
}

// RotatePepperIfDue rotates the pepper when it is older than
// lookup.pepper_rotation (never when that is 0). It reports whether it did.
func (s *Service) RotatePepperIfDue() (bool, error) {
	period := s.opts.Lookup.PepperRotation.D()
	if period <= 0 {
		return false, nil
	}
	_, created, err := s.Pepper()
	if err != nil {
		return false, err
	}
	if s.opts.Now().Sub(created) < period {
		return false, nil
	}
	s.bind.rotateMu.Lock()
	cur := s.bind.pepper.Load()
	s.bind.rotateMu.Unlock()
	if cur != nil && s.opts.Now().Sub(cur.Created) < period {
		return false, nil // someone else just rotated
	}
	return true, s.RotatePepper()
}
