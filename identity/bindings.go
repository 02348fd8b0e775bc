package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herald-im/herald/store"
)

// Bindings and the hashed-lookup index: the index maps sha256(address " "
// medium " " pepper) of every binding, for the current pepper only, to its
// mxid (storage_bolt.go, storage_pg.go).

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
	// pepper caches the current pepper (Pepper, hash_details). On
	// PostgreSQL another replica may change it: Refresh reads it again.
	pepper atomic.Pointer[pepperInfo]
}

type pepperInfo struct {
	Value   string
	Created time.Time
}

// ErrBadBinding means a binding lacks a medium, address or mxid.
var ErrBadBinding = errors.New("identity: binding needs medium, address and mxid")

// DB is the database the identity records live in.
func (s *Service) DB() *store.DB { return s.db }

// OnBind registers hook to run inside every PutBinding transaction (the
// invites package resolves pending invites there). Register hooks at start-up.
func (s *Service) OnBind(hook BindHook) {
	s.bind.hooksMu.Lock()
	s.bind.hooks = append(s.bind.hooks, hook)
	s.bind.hooksMu.Unlock()
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
	if err := s.st.putBinding(tx, &b); err != nil {
		return err
	}
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return err
	}
	if err := s.st.putHash(tx, lookupHashRaw(b.Address, b.Medium, pepper), b.MXID); err != nil {
		return err
	}
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
	if err := s.st.deleteBinding(tx, medium, address); err != nil {
		return err
	}
	pepper, err := s.pepperTx(tx)
	if err != nil {
		return err
	}
	return s.st.deleteHash(tx, lookupHashRaw(address, medium, pepper))
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
	return s.st.binding(tx, medium, normalizeAddress(medium, address))
}

// QueueBinding is BindingTx for a batch of reads: on PostgreSQL the read is
// queued (store.Tx.QueueRow) and *out is set when the transaction's next
// round trip has been sent (nil when unbound); on bbolt it is read at once.
func (s *Service) QueueBinding(tx *store.Tx, medium, address string, out **Binding) error {
	if pg, ok := s.st.(*pgStorage); ok && tx.PG != nil {
		return pg.queueBinding(tx, medium, normalizeAddress(medium, address), out)
	}
	b, err := s.BindingTx(tx, medium, address)
	*out = b
	return err
}

// Bindings calls fn for every binding, in (medium, address) order, until fn
// returns false. It reads a batch of bindings per read transaction, so a
// binding changed meanwhile may be seen in either state.
func (s *Service) Bindings(fn func(Binding) bool) error {
	var after []byte
	for {
		var batch []Binding
		err := s.db.View(func(tx *store.Tx) error {
			return s.st.scan(tx, kindBindings, after, scanBatch, func(k []byte, v any) error {
				after = k
				batch = append(batch, v.(Binding))
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, b := range batch {
			if !fn(b) {
				return nil
			}
		}
		if len(batch) < scanBatch {
			return nil
		}
	}
}

// scanBatch is how many records one read transaction of a scan takes.
const scanBatch = 1000

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
	p, err := s.st.pepper(tx)
	if err != nil {
		return "", err
	}
	if p != nil {
		return p.Value, nil
	}
	if !tx.Writable() {
		return "", errNoPepper
	}
	p, err = s.setPepperTx(tx, newPepper())
	if err != nil {
		return "", err
	}
	return p.Value, nil
}

var (
	errNoPepper    = errors.New("identity: no lookup pepper yet")
	errWrongPepper = errors.New("identity: not the current lookup pepper")
)

// setPepperTx makes pepper current and rebuilds the hash index for it. On
// PostgreSQL the commit notifies every replica (PepperChannel).
func (s *Service) setPepperTx(tx *store.Tx, pepper string) (*pepperInfo, error) {
	p := &pepperInfo{Value: pepper, Created: s.opts.Now().UTC()}
	if err := s.st.setPepper(tx, p, true); err != nil {
		return nil, err
	}
	// Publish only after commit.
	tx.OnCommit(func() { s.bind.pepper.Store(p) })
	return p, nil
}

// Pepper returns the current lookup pepper and when it was made, creating
// one on first use. It answers from this replica's copy: on PostgreSQL a
// rotation by another replica reaches it through Refresh.
func (s *Service) Pepper() (string, time.Time, error) {
	if p := s.bind.pepper.Load(); p != nil {
		return p.Value, p.Created, nil
	}
	var p *pepperInfo
	err := s.db.View(func(tx *store.Tx) (err error) {
		p, err = s.st.pepper(tx)
		return err
	})
	if err != nil {
		return "", time.Time{}, err
	}
	if p == nil {
		s.bind.rotateMu.Lock()
		defer s.bind.rotateMu.Unlock()
		if cur := s.bind.pepper.Load(); cur != nil {
			return cur.Value, cur.Created, nil
		}
		err := s.db.Update(func(tx *store.Tx) error {
			// Another replica may have made one first: pepperTx keeps it.
			if _, err := s.pepperTx(tx); err != nil {
				return err
			}
			var err error
			p, err = s.st.pepper(tx)
			return err
		})
		if err != nil {
			return "", time.Time{}, err
		}
	}
	s.bind.pepper.Store(p)
	return p.Value, p.Created, nil
}

// Refresh reads the pepper again from the database, for when another
// replica may have changed it: the wiring calls it on each signal of
// pgstore's Subscribe(PepperChannel) (a NOTIFY sent by the rotating
// transaction's commit, or the polling fallback). A rotation on one replica
// is thus served by hash_details on every other within the NOTIFY's delivery
// (normally milliseconds) and at worst within the polling interval. Lookups
// never depend on it: each compares the client's pepper with the database's
// own in the same snapshot as the index it reads.
func (s *Service) Refresh(ctx context.Context) error {
	var p *pepperInfo
	err := s.db.ViewContext(ctx, func(tx *store.Tx) (err error) {
		p, err = s.st.pepper(tx)
		return err
	})
	if err != nil {
		return err
	}
	if p != nil {
		s.bind.pepper.Store(p)
	}
	return nil
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
// Whether it is due is decided inside the rotating transaction, from the
// stored pepper, so replicas (or requests) racing to rotate rotate once.
func (s *Service) RotatePepperIfDue() (bool, error) {
	period := s.opts.Lookup.PepperRotation.D()
	if period <= 0 {
		return false, nil
	}
	if _, created, err := s.Pepper(); err != nil || s.opts.Now().Sub(created) < period {
		return false, err
	}
	s.bind.rotateMu.Lock()
	defer s.bind.rotateMu.Unlock()
	rotated := false
	err := s.db.Update(func(tx *store.Tx) error {
		rotated = false
		cur, err := s.st.pepper(tx)
		if err != nil {
			return err
		}
		if cur != nil && s.opts.Now().Sub(cur.Created) < period {
			// Someone else just rotated: this replica's copy was stale.
			tx.OnCommit(func() { s.bind.pepper.Store(cur) })
			return nil
		}
		rotated = true
		_, err = s.setPepperTx(tx, newPepper())
		return err
	})
	if err == nil && rotated {
		s.opts.Log.Info("lookup pepper rotated")
	}
	return rotated, err
}

// RotatePepperPeriodic is one pass of the scheduled pepper rotation
// (RotatePepperIfDue). On PostgreSQL the wiring runs it once per period
// across the replicas (pgstore.RunPeriodic); hash_details also rotates a
// pepper found due.
func (s *Service) RotatePepperPeriodic(ctx context.Context) error {
	_, err := s.RotatePepperIfDue()
	return err
}

// bindingWrite runs a transaction that binds or unbinds. On PostgreSQL every
// such change bumps the lookup index's one generation row, so concurrent
// binds under SERIALIZABLE would fail each other until their retries ran
// out: they run one at a time across the replicas instead
// (store.TxOptions.SerializeOn), each snapshot taken after the previous
// commit. Binds are people validating an address, not a hot path.
func (s *Service) bindingWrite(ctx context.Context, fn func(*store.Tx) error) error {
	if s.db.Backend() == store.BackendBolt {
		return s.db.UpdateContext(ctx, fn) // one writer already; not grouped
	}
	return s.db.CommitWith(ctx, store.TxOptions{SerializeOn: "identity.bindings"}, fn)
}
