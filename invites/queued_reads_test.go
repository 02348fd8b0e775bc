package invites

import (
	"testing"
	"time"

	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

// store-invite's reads of the de-duplication entry and the opt-outs are
// queued on PostgreSQL (sent with the transaction's next round trip, so the
// checks cost no round trip of their own) and read at once on bbolt; both
// give the same answers.
func TestStoreInviteChecksAreQueuedOnPostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		st := newStorage(db)
		if err := st.open(db, partInvites); err != nil {
			t.Fatal(err)
		}
		s := &Service{db: db, st: st}
		inv := &Invite{Sender: "@a:hs.test", RoomID: "!r:hs.test", Medium: "email", Address: "x@example.org",
			Token: "tok", EphemeralPublic: "pub", Created: time.Now().UTC()}
		if err := db.Commit(func(tx *store.Tx) error {
			if err := s.insert(tx, inv); err != nil {
				return err
			}
			return st.putOptOut(tx, OptOut{Address: "x@example.org", Sender: OptOutAnyone})
		}); err != nil {
			t.Fatal(err)
		}
		entry := inv.ID
		var id uint64
		var out bool
		err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
			if err := s.queueDedup(tx, "@a:hs.test", "!r:hs.test", "email", "x@example.org", &id); err != nil {
				return err
			}
			if err := s.queueOptedOut(tx, "X@example.org", "@a:hs.test", &out); err != nil {
				return err
			}
			if queued := id == 0 && !out; queued != (db.PG() != nil) {
				t.Errorf("answered before the round trip: %v; want that on bbolt only", !queued)
			}
			return tx.Flush()
		})
		if err != nil || id != entry || !out {
			t.Fatalf("queued reads: %v, entry %d (want %d), opted out %v (want true)", err, id, entry, out)
		}
	})
}
