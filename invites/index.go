package invites

import (
	"time"

	"github.com/herald-im/herald/store"
)

// Indexes and counters that keep every sweep, count and console list
// proportional to the work asked rather than to what is stored. They are all
// written by index (store.go), the one function every write of an invite
// goes through (insert, Update, Delete), inside the transaction that writes
// the invite, so they never disagree with the records. On bbolt
// (index_bolt.go) they are these buckets; on PostgreSQL (storage_pg.go) the
// indexes of the invites table's columns and the counter tables.
//
//	invites_expiry: expires_at (8-byte ns) id -> nil   pending invites with an expiry
//	invites_erase:  state_changed (8-byte ns) id -> nil finished invites still holding a secret
//	invites_by:     kind 0 value 0 id -> nil           kind s: sender, r: room id, a: room alias, h: homeserver
//	invites_count:  state 0 STATE -> count; day 0 c|r (8-byte day) -> count created|resolved that day (UTC)

// Kinds of the invites_by index, as Filter fields.
const (
	bySender     = "s"
	byRoom       = "r"
	byAlias      = "a"
	byHomeserver = "h"
)

func dayOf(t time.Time) uint64 { return uint64(t.Unix() / 86400) }

// holdsSecret reports whether a finished invite still has a secret for
// EraseSecrets to erase.
func holdsSecret(inv *Invite) bool {
	return inv.State != StatePending && (inv.Token != "" || inv.EphemeralPrivate != "")
}

// pendingEntry is what the console's states need of a pending invite.
type pendingEntry struct {
	id, mailID uint64
	expiresAt  time.Time
}

// CountsTx returns how many invites are in each state (every state present),
// from the counters, inside the caller's transaction. A storage error reads
// as zeros (the transaction's own error follows on PostgreSQL).
func (s *Service) CountsTx(tx *store.Tx) map[string]int {
	keys := make([]counterKey, 0, len(States))
	for _, st := range States {
		keys = append(keys, stateCounter(st))
	}
	c, _ := s.st.counters(tx, keys)
	out := make(map[string]int, len(States))
	for _, st := range States {
		out[st] = c[stateCounter(st)]
	}
	return out
}

// DayCount is how many invites were created, and how many resolved, on one
// day (UTC).
type DayCount struct {
	Day      time.Time `json:"day"` // midnight UTC
	Created  int       `json:"created"`
	Resolved int       `json:"resolved"`
}

// PerDay returns the invites created and resolved on each of the days days
// ending with the one holding now (UTC), oldest first, from the counters.
func (s *Service) PerDay(now time.Time, days int) ([]DayCount, error) {
	today := now.UTC().Truncate(24 * time.Hour)
	out := make([]DayCount, days)
	err := s.db.View(func(tx *store.Tx) error {
		keys := make([]counterKey, 0, 2*days)
		for i := range out {
			d := dayOf(today.AddDate(0, 0, i-days+1))
			keys = append(keys, counterKey{kind: 'c', day: d}, counterKey{kind: 'r', day: d})
		}
		c, err := s.st.counters(tx, keys)
		if err != nil {
			return err
		}
		for i := range out {
			d := today.AddDate(0, 0, i-days+1)
			out[i] = DayCount{Day: d, Created: c[counterKey{kind: 'c', day: dayOf(d)}], Resolved: c[counterKey{kind: 'r', day: dayOf(d)}]}
		}
		return nil
	})
	return out, err
}
