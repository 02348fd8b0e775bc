package invites

import (
	"strconv"
	"time"

	"github.com/herald-im/herald/store"
)

// storage is everything package invites keeps, on one backend: the invite
// records and their indexes and counters (store.go, index.go), the opt-outs
// (lifecycle.go), the upstream vouches (upstream.go) and the onbind
// deliveries' own indexes (delivery.go). The rules (states, validation,
// sweeps, lists) are written once above it; storage_bolt.go keeps the bbolt
// buckets, storage_pg.go the PostgreSQL tables (0005_invites.sql). Every
// method runs inside the caller's transaction.
type storage interface {
	// open prepares one part of the storage (partInvites, partUpstream,
	// partDeliveries) before its first use.
	open(db *store.DB, part string) error
	// get reads an invite (ErrNotFound).
	get(tx *store.Tx, id uint64) (*Invite, error)
	// getMany reads the invites with these ids, in that order, leaving out
	// those that do not exist (one round trip on PostgreSQL).
	getMany(tx *store.Tx, ids []uint64) ([]*Invite, error)
	// put writes inv's record (new or changed).
	put(tx *store.Tx, inv *Invite) error
	// remove deletes invite id's record.
	remove(tx *store.Tx, id uint64) error
	// nextID takes the next invite id.
	nextID(tx *store.Tx) (uint64, error)
	// index moves the indexes and counters from old (nil: a new invite) to
	// inv (nil: a deleted one), after put (or before remove). claimed says
	// that claimDedup wrote new invite inv's de-duplication entry in this
	// transaction (it reserved inv.ID): the entry is not written again.
	index(tx *store.Tx, old, inv *Invite, claimed bool) error
	// byToken is the id of the invite holding token (0: none).
	byToken(tx *store.Tx, token string) (uint64, error)
	// forAddress lists the ids of the address's invites, oldest first.
	forAddress(tx *store.Tx, medium, address string) ([]uint64, error)
	// dedup is the id of the de-duplication entry for the tuple (0: none).
	dedup(tx *store.Tx, sender, room, medium, address string) (uint64, error)
	// claimDedup is dedup inside store-invite's write transaction, which
	// stores the tuple's new invite unless the entry names a pending one
	// (or fails). reserved, when not 0, is the new invite's id, already
	// taken (else the caller takes one with nextID). On PostgreSQL
	// (store-invite runs at READ COMMITTED there) it first takes the
	// address's shared advisory lock (addressLock), then inserts the entry
	// with a new id, so that two transactions storing the same tuple
	// collide on its primary key: the second waits for the first and, when
	// it committed, reads its entry; an existing entry is read FOR UPDATE,
	// so two transactions replacing a stale entry do the same.
	claimDedup(tx *store.Tx, sender, room, medium, address string) (existing, reserved uint64, err error)
	// inState lists the ids of the invites in state, oldest first.
	inState(tx *store.Tx, state string) ([]uint64, error)
	// hasData reports whether any invite is stored.
	hasData(tx *store.Tx) (bool, error)
	// counters reads counters (every key present, absent ones 0).
	counters(tx *store.Tx, keys []counterKey) (map[counterKey]int, error)
	// expiryDue lists, soonest expiry first, up to limit (0: no limit) ids of
	// pending invites whose expiry is at or before now.
	expiryDue(tx *store.Tx, now time.Time, limit int) ([]uint64, error)
	// eraseDue lists, oldest state change first, up to limit ids of finished
	// invites holding a secret whose state changed before cutoff, after the
	// cursor from (zero: from the start), and the cursor past the last one.
	eraseDue(tx *store.Tx, from eraseCursor, cutoff time.Time, limit int) ([]uint64, eraseCursor, error)
	// descend lists, highest first, up to limit ids below before (0: no
	// bound) of the invites src names.
	descend(tx *store.Tx, src source, before uint64, limit int) ([]uint64, error)
	// countSource counts the invites src names (a "by" source).
	countSource(tx *store.Tx, src source) (int, error)
	// pending lists the pending invites' entries, newest first, below before
	// (0: no bound), at most limit (0: all).
	pending(tx *store.Tx, before uint64, limit int) ([]pendingEntry, error)

	// Opt-outs (lifecycle.go).
	optedOut(tx *store.Tx, address, sender string) (bool, error)
	anyOptOut(tx *store.Tx, address string) (bool, error)
	putOptOut(tx *store.Tx, o OptOut) error
	deleteOptOut(tx *store.Tx, address, sender string) error

	// Upstream vouches (upstream.go): the vouch's JSON by invite, and the
	// resolve times.
	putVouch(tx *store.Tx, id uint64, raw []byte) error
	getVouch(tx *store.Tx, id uint64) ([]byte, error) // nil: none
	deleteVouch(tx *store.Tx, id uint64) error
	addVouchDue(tx *store.Tx, due time.Time, id uint64) error
	// firstVouchDue is the earliest resolve time (ok false: none).
	firstVouchDue(tx *store.Tx) (due time.Time, id uint64, ok bool, err error)
	deleteVouchDue(tx *store.Tx, due time.Time, id uint64) error

	// The onbind deliveries' own indexes (delivery.go).
	indexDelivery(tx *store.Tx, dl Delivery) error
	unindexDelivery(tx *store.Tx, dl Delivery) error
	// deliveriesOf lists the deliveries that carried the invite, oldest first.
	deliveriesOf(tx *store.Tx, inviteID uint64) ([]uint64, error)
	// deliveriesTo lists the deliveries to an address, oldest first.
	deliveriesTo(tx *store.Tx, medium, address string) ([]uint64, error)

	// For CopyStorage and SumStorage (copy.go): the invites by ascending id
	// after after, at most limit; the id sequence moved past last; and
	// everything else stored.
	records(tx *store.Tx, after uint64, limit int) ([]*Invite, error)
	setNextID(tx *store.Tx, last uint64) error
	dump(tx *store.Tx) (*storageDump, error)
}

// storageDump is everything stored besides the invite records, each kind in
// its own order (sorted by copy.go before it is summed).
type storageDump struct {
	optOuts   []OptOut
	vouches   []vouchRow
	dues      []vouchDue
	dedup     []dedupRow
	counters  map[string]int // by counterKey.name, zero counters left out
	byInvite  [][2]uint64    // invite id, delivery id
	byAddress []addressRow
}

type vouchRow struct {
	id  uint64
	raw []byte
}

type vouchDue struct {
	due time.Time
	id  uint64
}

type dedupRow struct {
	sender, room, medium, address string
	id                            uint64
}

type addressRow struct {
	medium, address string
	delivery        uint64
}

// newStorage picks the implementation for db's backend.
func newStorage(db *store.DB) storage {
	if db.Backend() == store.BackendPostgres {
		return &pgStorage{}
	}
	return &boltStorage{}
}

// source names the invites a console list walks: one value of a "by" index
// (kind bySender, byRoom, byAlias, byHomeserver), one state (kind
// "state"), or every invite (kind "").
type source struct {
	kind, value string
}

const byState = "state"

// eraseCursor is a position in the erase index: past (at, id).
type eraseCursor struct {
	at time.Time
	id uint64
}

// counterKey is one counter: invites in a state (kind 's'), or created
// ('c') or resolved ('r') on a UTC day.
type counterKey struct {
	kind  byte
	state string
	day   uint64
}

// name is the counter's name on PostgreSQL (invite_counts.key) and in
// counters' answers.
func (k counterKey) name() string {
	switch k.kind {
	case 's':
		return "state:" + k.state
	case 'c':
		return "created:" + strconv.FormatUint(k.day, 10)
	}
	return "resolved:" + strconv.FormatUint(k.day, 10)
}

func stateCounter(state string) counterKey { return counterKey{kind: 's', state: state} }

// counterKeys are the counters inv adds one to.
func counterKeys(inv *Invite) []counterKey {
	if inv == nil {
		return nil
	}
	out := []counterKey{stateCounter(inv.State), {kind: 'c', day: dayOf(inv.Created)}}
	if inv.State == StateResolved {
		out = append(out, counterKey{kind: 'r', day: dayOf(inv.StateChanged)})
	}
	return out
}

// counterChanges is what moving inv from old to new does to the counters.
func counterChanges(old, inv *Invite) map[counterKey]int {
	out := map[counterKey]int{}
	oldC, newC := counterKeys(old), counterKeys(inv)
	for _, k := range oldC {
		out[k]--
	}
	for _, k := range newC {
		out[k]++
	}
	for k, n := range out {
		if n == 0 {
			delete(out, k)
		}
	}
	return out
}
