package identity

import (
	"testing"

	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

// QueueBinding gives BindingTx's answers; on PostgreSQL the read waits for
// the transaction's next round trip (it costs none of its own), on bbolt it
// is read at once.
func TestQueueBinding(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		s := newTestService(t, db, newClock(), 0)
		bind(t, s, "Alice@Example.ORG", "@alice:example.org")
		var alice, nobody *Binding
		err := db.ReadOne(t.Context(), func(tx *store.Tx) error {
			if err := s.QueueBinding(tx, "email", "ALICE@example.org", &alice); err != nil {
				return err
			}
			if err := s.QueueBinding(tx, "email", "nobody@example.org", &nobody); err != nil {
				return err
			}
			if answered := alice != nil; answered == (db.PG() != nil) {
				t.Errorf("answered before the round trip: %v; want that on bbolt only", answered)
			}
			return tx.Flush()
		})
		if err != nil || alice == nil || alice.MXID != "@alice:example.org" || nobody != nil {
			t.Fatalf("QueueBinding: %v, alice %+v, nobody %+v", err, alice, nobody)
		}
	})
}
