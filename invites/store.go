package invites

import (
	"context"
	"encoding/json"
	"errors"
	"time"

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

// ErrNotFound means no invite matches.
var ErrNotFound = errors.New("invites: no such invite")

func (s *Service) getTx(tx *store.Tx, id uint64) (*Invite, error) { return s.st.get(tx, id) }

// Get returns the invite with that id. One statement, so it runs without a
// transaction (store.DB.ReadOne): the mail worker reads each invite it
// renders through it.
func (s *Service) Get(id uint64) (*Invite, error) {
	var inv *Invite
	err := s.db.ReadOne(context.Background(), func(tx *store.Tx) error {
		var err error
		inv, err = s.getTx(tx, id)
		return err
	})
	return inv, err
}

// GetTx is Get inside the caller's transaction.
func (s *Service) GetTx(tx *store.Tx, id uint64) (*Invite, error) { return s.getTx(tx, id) }

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
	id, err := s.st.byToken(tx, token)
	if err != nil {
		return nil, err
	}
	if id == 0 {
		return nil, ErrNotFound
	}
	return s.getTx(tx, id)
}

// ForAddress returns every invite (any state) for the address, oldest first.
// address is normalised for email.
func (s *Service) ForAddress(tx *store.Tx, medium, address string) ([]*Invite, error) {
	address = normalize(medium, address)
	ids, err := s.st.forAddress(tx, medium, address)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	return s.st.getMany(tx, ids)
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

// lockAddress keeps store-invite from storing an invite for the address
// until tx commits (the bind hook takes it before reading the address's
// pending invites). On bbolt, whose single writer serializes them, it does
// nothing; on PostgreSQL see lockAddressPG.
func (s *Service) lockAddress(tx *store.Tx, medium, address string) error {
	if tx.PG == nil {
		return nil
	}
	return lockAddressPG(s.db, tx, medium, normalize(medium, address))
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
func (s *Service) insert(tx *store.Tx, inv *Invite) error { return s.insertClaimed(tx, inv, false) }

// insertClaimed is insert; claimed says store-invite's claimDedup reserved
// inv.ID and wrote its de-duplication entry (storage.index).
func (s *Service) insertClaimed(tx *store.Tx, inv *Invite, claimed bool) error {
	if inv.ID == 0 {
		id, err := s.reserveID(tx)
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
	if err := s.st.put(tx, inv); err != nil {
		return err
	}
	return s.st.index(tx, nil, inv, claimed)
}

// InsertTx stores a new invite inside the caller's write transaction with
// every index and counter (index.go): the one way, besides store-invite and
// Update, an invite is written (the sydent importer and herald bench
// populate use it). A zero ID is assigned; a zero State is pending. The
// ephemeral key (keys.Ephemeral) is the caller's to store.
func (s *Service) InsertTx(tx *store.Tx, inv *Invite) error { return s.insert(tx, inv) }

// reserveID takes the next invite id.
func (s *Service) reserveID(tx *store.Tx) (uint64, error) { return s.st.nextID(tx) }

// Update writes inv (which must exist) inside the caller's write transaction
// and keeps every index right: token, address, state, and the de-duplication
// entry (present only while pending). A change of state stamps StateChanged
// (unless the caller set it) and, for expired, revoked and declined invites,
// marks the ephemeral key invalid so ephemeral/isvalid answers false.
func (s *Service) Update(tx *store.Tx, inv *Invite) error {
	old, err := s.getTx(tx, inv.ID)
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
	if err := s.st.put(tx, inv); err != nil {
		return err
	}
	return s.st.index(tx, old, inv, false)
}

// Delete erases an invite, its indexes and its ephemeral key (data-protection
// erasure) inside the caller's write transaction.
func (s *Service) Delete(tx *store.Tx, id uint64) error {
	old, err := s.getTx(tx, id)
	if err != nil {
		return err
	}
	if err := s.st.index(tx, old, nil, false); err != nil {
		return err
	}
	if old.EphemeralPublic != "" && s.opts.Ephemeral != nil {
		if err := s.opts.Ephemeral.Delete(tx, old.EphemeralPublic); err != nil {
			return err
		}
	}
	if err := s.st.deleteVouch(tx, id); err != nil { // upstream.go
		return err
	}
	return s.st.remove(tx, id)
}

// pendingDuplicate returns the pending invite from sender to address in room, if any.
func (s *Service) pendingDuplicate(tx *store.Tx, sender, room, medium, address string) (*Invite, error) {
	id, err := s.st.dedup(tx, sender, room, medium, address)
	if err != nil || id == 0 {
		return nil, err
	}
	return s.duplicate(tx, id)
}

// queueDedup reads the id of the de-duplication entry of (sender, room,
// medium, address) into *out, 0 when there is none: on PostgreSQL queued
// with the transaction's next round trip (store.Tx.QueueRow), on bbolt at
// once.
func (s *Service) queueDedup(tx *store.Tx, sender, room, medium, address string, out *uint64) error {
	if pg, ok := s.st.(*pgStorage); ok && tx.PG != nil {
		return pg.queueDedup(tx, sender, room, medium, address, out)
	}
	id, err := s.st.dedup(tx, sender, room, medium, address)
	*out = id
	return err
}

// queueOptedOut reads whether address opted out of invites from sender (or
// from anyone) into *out, queued on PostgreSQL as queueDedup.
func (s *Service) queueOptedOut(tx *store.Tx, address, sender string, out *bool) error {
	address = normalize("email", address)
	if pg, ok := s.st.(*pgStorage); ok && tx.PG != nil {
		return pg.queueOptedOut(tx, address, sender, out)
	}
	o, err := s.st.optedOut(tx, address, sender)
	*out = o
	return err
}

// claimDuplicate is pendingDuplicate inside store-invite's write
// transaction, which goes on to store a new invite when there is none: the
// storage may hold the de-duplication entry for it from here on
// (storage.claimDedup).
func (s *Service) claimDuplicate(tx *store.Tx, sender, room, medium, address string) (dup *Invite, reserved uint64, err error) {
	id, reserved, err := s.st.claimDedup(tx, sender, room, medium, address)
	if err != nil || id == 0 {
		return nil, reserved, err
	}
	dup, err = s.duplicate(tx, id)
	return dup, reserved, err
}

// duplicate is invite id if it is a pending duplicate (see pendingDuplicate).
func (s *Service) duplicate(tx *store.Tx, id uint64) (*Invite, error) {
	inv, err := s.getTx(tx, id)
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
	ids, err := s.st.inState(tx, state)
	if err != nil {
		return err
	}
	for _, id := range ids {
		inv, err := s.getTx(tx, id)
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

// source picks the most selective index for f: the invites of one room,
// alias, sender, homeserver or state, or all of them, and whether every
// candidate matches f (so the index alone counts the matches).
func (f Filter) source() (src source, exact bool) {
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
			return source{c.kind, c.v}, others == 1
		}
	}
	if f.State != "" {
		return source{byState, f.State}, others == 1
	}
	return source{}, others == 0
}

// listPage is how many ids a list reads from an index at a time.
const listPage = 256

// descendAll yields, highest first, the ids below before (0: no bound) of
// src's invites, reading the index a page at a time, until yield says stop.
func (s *Service) descendAll(tx *store.Tx, src source, before uint64, yield func(uint64) (bool, error)) error {
	for {
		ids, err := s.st.descend(tx, src, before, listPage)
		if err != nil {
			return err
		}
		for _, id := range ids {
			more, err := yield(id)
			if err != nil || !more {
				return err
			}
		}
		if len(ids) < listPage {
			return nil
		}
		before = ids[len(ids)-1]
	}
}

// descendInvites is descendAll yielding the invites, read a page at a time
// (the first page of first ids, at least 16, at most listPage: what a
// page of a list is likely to need).
func (s *Service) descendInvites(tx *store.Tx, src source, before uint64, first int, yield func(*Invite) (bool, error)) error {
	page := min(max(first, 16), listPage)
	for {
		ids, err := s.st.descend(tx, src, before, page)
		if err != nil {
			return err
		}
		invs, err := s.st.getMany(tx, ids)
		if err != nil {
			return err
		}
		for _, inv := range invs {
			more, err := yield(inv)
			if err != nil || !more {
				return err
			}
		}
		if len(ids) < page {
			return nil
		}
		before = ids[len(ids)-1]
		page = listPage
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
		out, total = nil, -1
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
		src, exact := f.source()
		if exact {
			switch src.kind {
			case "":
				n := 0
				for _, st := range s.CountsTx(tx) {
					n += st
				}
				total = n
			case byState:
				total = s.CountsTx(tx)[f.State]
			default:
				n, err := s.st.countSource(tx, src)
				if err != nil {
					return err
				}
				total = n
			}
		}
		skip := f.Offset
		return s.descendInvites(tx, src, f.Before, f.Offset+f.Limit, func(inv *Invite) (bool, error) {
			if !f.match(inv) {
				return true, nil
			}
			if skip > 0 {
				skip--
				return true, nil
			}
			out = append(out, inv)
			return len(out) < f.Limit, nil
		})
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
