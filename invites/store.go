package invites

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/store"
)

// Invite states.
const (
	StatePending  = "pending"  // stored, waiting for the address to be bound
	StateResolved = "resolved" // delivered to (or queued for) the invitee's homeserver
	StateExpired  = "expired"
	StateRevoked  = "revoked"
	StateDeclined = "declined"
)

// States lists every state, in the order a dashboard shows them.
var States = []string{StatePending, StateResolved, StateExpired, StateRevoked, StateDeclined}

// Invite is one stored third-party invite.
type Invite struct {
	ID      uint64 `json:"id"`
	Token   string `json:"token"` // erased ("") after the retention period
	Medium  string `json:"medium"`
	Address string `json:"address"` // normalised
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`

	// What the homeserver sent, kept for the email.
	RoomAlias         string                     `json:"room_alias,omitempty"`
	RoomAvatarURL     string                     `json:"room_avatar_url,omitempty"`
	RoomJoinRules     string                     `json:"room_join_rules,omitempty"`
	RoomName          string                     `json:"room_name,omitempty"`
	RoomType          string                     `json:"room_type,omitempty"`
	SenderDisplayName string                     `json:"sender_display_name,omitempty"`
	SenderAvatarURL   string                     `json:"sender_avatar_url,omitempty"`
	WebClientLocation string                     `json:"web_client_location,omitempty"` // org.matrix.web_client_location
	Extra             map[string]json.RawMessage `json:"extra,omitempty"`               // any other keys

	PublicKey        string `json:"public_key"` // long-term key (unpadded base64) given in the answer
	KeyID            string `json:"key_id"`     // its id, "ed25519:..."
	EphemeralPublic  string `json:"ephemeral_public"`
	EphemeralPrivate string `json:"ephemeral_private,omitempty"` // seed, unpadded base64; erased after retention

	Created      time.Time `json:"created"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"` // zero: never
	State        string    `json:"state"`
	StateChanged time.Time `json:"state_changed"`
	ResolvedMXID string    `json:"resolved_mxid,omitempty"`
	MailID       uint64    `json:"mail_id,omitempty"` // the invite email in the mailer outbox
	Homeserver   string    `json:"homeserver"`        // the sender's server
	Via          string    `json:"via,omitempty"`     // "v2", "v1", or "sydent" (imported)
	// SignAs is the server name signatures for this invite are made under
	// when it is not server_name: an invite imported from another identity
	// server (sydent) keeps that server's name and key id.
	SignAs string `json:"sign_as,omitempty"`

	// MailedAt is when the last invite email was queued (zero on records
	// written before it was kept: Created then stands for it).
	MailedAt time.Time `json:"mailed_at,omitzero"`
}

// Expired reports whether inv is past its expiry time at now.
func (inv *Invite) Expired(now time.Time) bool {
	return !inv.ExpiresAt.IsZero() && !now.Before(inv.ExpiresAt)
}

// Pending reports whether inv is pending and not past its expiry at now.
func (inv *Invite) Pending(now time.Time) bool {
	return inv.State == StatePending && !inv.Expired(now)
}

// Buckets. Keys are big-endian ids so cursors walk them in creation order.
var (
	bktInvites = []byte("invites")       // id -> JSON Invite
	bktToken   = []byte("invites_token") // token -> id
	bktAddr    = []byte("invites_addr")  // medium 0 address 0 id -> nil
	bktDedup   = []byte("invites_dedup") // sender 0 room 0 medium 0 address -> id, pending only
	bktState   = []byte("invites_state") // state 0 id -> nil; for pending: mail id, expires_at (pendingValue)
)

var allBuckets = [][]byte{bktInvites, bktToken, bktAddr, bktDedup, bktState, bktExpiry, bktErase, bktBy, bktCount}

// ErrNotFound means no invite matches.
var ErrNotFound = errors.New("invites: no such invite")

func join0(parts ...string) []byte {
	var b bytes.Buffer
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(p)
	}
	return b.Bytes()
}

func addrPrefix(medium, address string) []byte { return append(join0(medium, address), 0) }

func addrKey(medium, address string, id uint64) []byte {
	return append(addrPrefix(medium, address), store.U64(id)...)
}

func dedupKey(sender, room, medium, address string) []byte {
	return join0(sender, room, medium, address)
}

func stateKey(state string, id uint64) []byte { return append(join0(state, ""), store.U64(id)...) }

func getTx(tx *store.Tx, id uint64) (*Invite, error) {
	raw := tx.Bolt.Bucket(bktInvites).Get(store.U64(id))
	if raw == nil {
		return nil, ErrNotFound
	}
	inv := new(Invite)
	if err := json.Unmarshal(raw, inv); err != nil {
		return nil, err
	}
	return inv, nil
}

func putRecord(tx *store.Tx, inv *Invite) error {
	raw, err := json.Marshal(inv)
	if err != nil {
		return err
	}
	b := tx.Bolt.Bucket(bktInvites)
	b.FillPercent = appendFill
	return b.Put(store.U64(inv.ID), raw)
}

// appendFill is the fill of pages split in buckets whose keys mostly grow
// (ids, times, prefix+id): bbolt's default of one half leaves every page
// half empty when keys are appended, which doubled the file. A tenth is left
// for records that grow a little in place.
const appendFill = 0.9

// Get returns the invite with that id.
func (s *Service) Get(id uint64) (*Invite, error) {
	var inv *Invite
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		inv, err = getTx(tx, id)
		return err
	})
	return inv, err
}

// GetTx is Get inside the caller's transaction.
func (s *Service) GetTx(tx *store.Tx, id uint64) (*Invite, error) { return getTx(tx, id) }

// ByToken returns the invite with that token.
func (s *Service) ByToken(token string) (*Invite, error) {
	var inv *Invite
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		inv, err = s.ByTokenTx(tx, token)
		return err
	})
	return inv, err
}

// ByTokenTx is ByToken inside the caller's transaction.
func (s *Service) ByTokenTx(tx *store.Tx, token string) (*Invite, error) {
	if token == "" {
		return nil, ErrNotFound
	}
	id := tx.Bolt.Bucket(bktToken).Get([]byte(token))
	if len(id) != 8 {
		return nil, ErrNotFound
	}
	return getTx(tx, u64(id))
}

// ForAddress returns every invite (any state) for the address, oldest first.
// address is normalised for email.
func (s *Service) ForAddress(tx *store.Tx, medium, address string) ([]*Invite, error) {
	address = normalize(medium, address)
	prefix := addrPrefix(medium, address)
	var out []*Invite
	c := tx.Bolt.Bucket(bktAddr).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) != len(prefix)+8 {
			continue
		}
		inv, err := getTx(tx, u64(k[len(prefix):]))
		if err != nil {
			return nil, err
		}
		out = append(out, inv)
	}
	return out, nil
}

// PendingFor returns the address's invites that are pending and not past
// their expiry, oldest first, inside the caller's transaction (the bind hook
// calls it). address is normalised for email. The slice is fresh every call.
func (s *Service) PendingFor(tx *store.Tx, medium, address string) ([]*Invite, error) {
	all, err := s.ForAddress(tx, medium, address)
	if err != nil {
		return nil, err
	}
	now := s.opts.Now()
	out := make([]*Invite, 0, len(all))
	for _, inv := range all {
		if inv.Pending(now) {
			out = append(out, inv)
		}
	}
	return out, nil
}

func normalize(medium, address string) string {
	if medium == "email" {
		if n, err := identity.NormalizeEmail(address); err == nil {
			return n
		}
	}
	return address
}

// insert stores a new invite, assigning its ID, and writes every index.
// A non-zero inv.ID must come from reserveID in the same transaction.
func (s *Service) insert(tx *store.Tx, inv *Invite) error {
	if inv.ID == 0 {
		id, err := reserveID(tx)
		if err != nil {
			return err
		}
		inv.ID = id
	}
	if inv.State == "" {
		inv.State = StatePending
	}
	if inv.StateChanged.IsZero() {
		inv.StateChanged = inv.Created
	}
	if err := putRecord(tx, inv); err != nil {
		return err
	}
	return s.index(tx, nil, inv)
}

// InsertTx stores a new invite inside the caller's write transaction with
// every index and counter (index.go): the one way, besides store-invite and
// Update, an invite is written (the sydent importer and herald bench
// populate use it). A zero ID is assigned; a zero State is pending. The
// ephemeral key (keys.Ephemeral) is the caller's to store.
func (s *Service) InsertTx(tx *store.Tx, inv *Invite) error { return s.insert(tx, inv) }

// reserveID takes the next invite id.
func reserveID(tx *store.Tx) (uint64, error) { return tx.Bolt.Bucket(bktInvites).NextSequence() }

// index moves the indexes and counters from old (nil for a new invite) to
// inv. Every write of an invite goes through it (insert, Update, Delete).
func (s *Service) index(tx *store.Tx, old, inv *Invite) error {
	if err := indexSweepsAndCounts(tx, old, inv); err != nil {
		return err
	}
	tb, ab, db, sb := tx.Bolt.Bucket(bktToken), tx.Bolt.Bucket(bktAddr), tx.Bolt.Bucket(bktDedup), tx.Bolt.Bucket(bktState)
	id := store.U64(inv.ID)
	if old != nil {
		if old.Token != "" && old.Token != inv.Token {
			if err := tb.Delete([]byte(old.Token)); err != nil {
				return err
			}
		}
		if old.Medium != inv.Medium || old.Address != inv.Address {
			if err := ab.Delete(addrKey(old.Medium, old.Address, old.ID)); err != nil {
				return err
			}
		}
		if old.State != inv.State {
			if err := sb.Delete(stateKey(old.State, old.ID)); err != nil {
				return err
			}
		}
		dk := dedupKey(old.Sender, old.RoomID, old.Medium, old.Address)
		if v := db.Get(dk); v != nil && u64(v) == old.ID {
			if err := db.Delete(dk); err != nil {
				return err
			}
		}
	}
	if inv.Token != "" {
		if err := tb.Put([]byte(inv.Token), id); err != nil {
			return err
		}
	}
	if inv.Address != "" {
		if err := ab.Put(addrKey(inv.Medium, inv.Address, inv.ID), nil); err != nil {
			return err
		}
	}
	sb.FillPercent = appendFill
	if err := sb.Put(stateKey(inv.State, inv.ID), pendingValue(inv)); err != nil {
		return err
	}
	if inv.State == StatePending && inv.Token != "" {
		if err := db.Put(dedupKey(inv.Sender, inv.RoomID, inv.Medium, inv.Address), id); err != nil {
			return err
		}
	}
	return nil
}

// Update writes inv (which must exist) inside the caller's write transaction
// and keeps every index right: token, address, state, and the de-duplication
// entry (present only while pending). A change of state stamps StateChanged
// (unless the caller set it) and, for expired, revoked and declined invites,
// marks the ephemeral key invalid so ephemeral/isvalid answers false.
func (s *Service) Update(tx *store.Tx, inv *Invite) error {
	old, err := getTx(tx, inv.ID)
	if err != nil {
		return err
	}
	if old.State != inv.State {
		if inv.StateChanged.Equal(old.StateChanged) {
			inv.StateChanged = s.opts.Now().UTC()
		}
		switch inv.State {
		case StateExpired, StateRevoked, StateDeclined:
			if inv.EphemeralPublic != "" && s.opts.Ephemeral != nil {
				if err := s.opts.Ephemeral.Invalidate(tx, inv.EphemeralPublic); err != nil {
					return err
				}
			}
		}
	}
	if err := putRecord(tx, inv); err != nil {
		return err
	}
	return s.index(tx, old, inv)
}

// Delete erases an invite, its indexes and its ephemeral key (data-protection
// erasure) inside the caller's write transaction.
func (s *Service) Delete(tx *store.Tx, id uint64) error {
	old, err := getTx(tx, id)
	if err != nil {
		return err
	}
	if old.Token != "" {
		if err := tx.Bolt.Bucket(bktToken).Delete([]byte(old.Token)); err != nil {
			return err
		}
	}
	if err := tx.Bolt.Bucket(bktAddr).Delete(addrKey(old.Medium, old.Address, id)); err != nil {
		return err
	}
	if err := tx.Bolt.Bucket(bktState).Delete(stateKey(old.State, id)); err != nil {
		return err
	}
	dk := dedupKey(old.Sender, old.RoomID, old.Medium, old.Address)
	if v := tx.Bolt.Bucket(bktDedup).Get(dk); v != nil && u64(v) == id {
		if err := tx.Bolt.Bucket(bktDedup).Delete(dk); err != nil {
			return err
		}
	}
	if err := indexSweepsAndCounts(tx, old, nil); err != nil {
		return err
	}
	if old.EphemeralPublic != "" && s.opts.Ephemeral != nil {
		if err := s.opts.Ephemeral.Delete(tx, old.EphemeralPublic); err != nil {
			return err
		}
	}
	if err := deleteVouch(tx, id); err != nil { // upstream.go
		return err
	}
	return tx.Bolt.Bucket(bktInvites).Delete(store.U64(id))
}

// pendingDuplicate returns the pending invite from sender to address in room, if any.
func (s *Service) pendingDuplicate(tx *store.Tx, sender, room, medium, address string) (*Invite, error) {
	v := tx.Bolt.Bucket(bktDedup).Get(dedupKey(sender, room, medium, address))
	if len(v) != 8 {
		return nil, nil
	}
	inv, err := getTx(tx, u64(v))
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil || !inv.Pending(s.opts.Now()) {
		return nil, err
	}
	if inv.EphemeralPublic == "" {
		// Imported from sydent (import.go), whose ephemeral key is not
		// known: its store-invite answer cannot be given again, so a repeat
		// makes a new invite.
		return nil, nil
	}
	return inv, nil
}

// EachInState calls fn for every invite in state, oldest first, inside the
// caller's transaction. fn must not change the state index of invites other
// than the one it is given (Update on that one is fine in a write tx).
func (s *Service) EachInState(tx *store.Tx, state string, fn func(*Invite) error) error {
	prefix := join0(state, "")
	var ids []uint64
	c := tx.Bolt.Bucket(bktState).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) == len(prefix)+8 {
			ids = append(ids, u64(k[len(prefix):]))
		}
	}
	for _, id := range ids {
		inv, err := getTx(tx, id)
		if err != nil {
			return err
		}
		if err := fn(inv); err != nil {
			return err
		}
	}
	return nil
}

// Filter selects invites for List. Zero fields match everything.
type Filter struct {
	State      string
	RoomID     string
	RoomAlias  string
	Sender     string
	Homeserver string
	Address    string // matched after normalisation
	Since      time.Time
	Until      time.Time
	Limit      int // default 50
	Offset     int
	// Before, when not zero, starts the list below this invite id (the
	// last id of the previous page): paging without Offset's skipping.
	Before uint64
}

func (f Filter) match(inv *Invite) bool {
	switch {
	case f.State != "" && inv.State != f.State,
		f.RoomID != "" && inv.RoomID != f.RoomID,
		f.RoomAlias != "" && inv.RoomAlias != f.RoomAlias,
		f.Sender != "" && inv.Sender != f.Sender,
		f.Homeserver != "" && inv.Homeserver != f.Homeserver,
		f.Address != "" && inv.Address != f.Address,
		f.Before != 0 && inv.ID >= f.Before,
		!f.Since.IsZero() && inv.Created.Before(f.Since),
		!f.Until.IsZero() && !inv.Created.Before(f.Until):
		return false
	}
	return true
}

// source picks the most selective index for f: the bucket and key prefix
// whose prefix+ID keys name the candidates, and whether every candidate
// matches f (so the index alone counts the matches).
func (f Filter) source() (bucket, prefix []byte, exact bool) {
	others := 0
	for _, v := range []string{f.State, f.RoomID, f.RoomAlias, f.Sender, f.Homeserver} {
		if v != "" {
			others++
		}
	}
	if !f.Since.IsZero() || !f.Until.IsZero() || f.Before != 0 {
		others++
	}
	for _, c := range []struct{ kind, v string }{{byRoom, f.RoomID}, {byAlias, f.RoomAlias}, {bySender, f.Sender}, {byHomeserver, f.Homeserver}} {
		if c.v != "" {
			return bktBy, byPrefix(c.kind, c.v), others == 1
		}
	}
	if f.State != "" {
		return bktState, join0(f.State, ""), others == 1
	}
	return bktInvites, nil, others == 0
}

// descending yields, highest first, the IDs below before (0: no bound) of
// b's keys that are prefix followed by an 8-byte ID.
func descending(b *bolt.Bucket, prefix []byte, before uint64, yield func(uint64) bool) {
	if before == 0 {
		for id := range store.Descending(b, prefix) {
			if !yield(id) {
				return
			}
		}
		return
	}
	c := b.Cursor()
	k, _ := c.Seek(append(append([]byte{}, prefix...), store.U64(before)...))
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
		if len(k) == len(prefix)+8 && !yield(u64(k[len(prefix):])) {
			return
		}
	}
}

// List returns the invites matching f, newest first, and how many match in
// all. It walks the most selective index (address, room, alias, sender,
// homeserver, state, or the invites by id) from the newest and stops once the
// page is full, so its cost follows Offset+Limit and the filter's
// selectivity, not what is stored. The total comes from the counters or the
// index when they alone answer the filter; otherwise it is -1 (unknown).
func (s *Service) List(f Filter) ([]*Invite, int, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	if f.Address != "" {
		f.Address = normalize("email", f.Address)
	}
	var out []*Invite
	total := -1
	err := s.db.View(func(tx *store.Tx) error {
		if f.Address != "" {
			// An address has few invites: count them all exactly.
			all, err := s.ForAddress(tx, "email", f.Address)
			if err != nil {
				return err
			}
			total = 0
			for i := len(all) - 1; i >= 0; i-- {
				if !f.match(all[i]) {
					continue
				}
				if total >= f.Offset && len(out) < f.Limit {
					out = append(out, all[i])
				}
				total++
			}
			return nil
		}
		bucket, prefix, exact := f.source()
		b := tx.Bolt.Bucket(bucket)
		if exact {
			switch {
			case bucket == nil:
			case bytes.Equal(bucket, bktInvites):
				n := 0
				for _, st := range s.CountsTx(tx) {
					n += st
				}
				total = n
			case bytes.Equal(bucket, bktState):
				total = s.CountsTx(tx)[f.State]
			default:
				total, _ = store.CountPrefix(b, prefix)
			}
		}
		skip := f.Offset
		var ferr error
		descending(b, prefix, f.Before, func(id uint64) bool {
			inv, err := getTx(tx, id)
			if err != nil {
				ferr = err
				return false
			}
			if !f.match(inv) {
				return true
			}
			if skip > 0 {
				skip--
				return true
			}
			out = append(out, inv)
			return len(out) < f.Limit
		})
		return ferr
	})
	return out, total, err
}

// Counts returns how many invites are in each state (every state present),
// from the counters kept with every write.
func (s *Service) Counts() (map[string]int, error) {
	var out map[string]int
	err := s.db.View(func(tx *store.Tx) error {
		out = s.CountsTx(tx)
		return nil
	})
	return out, err
}

func u64(b []byte) uint64 {
	return store.ParseU64(b)
}
