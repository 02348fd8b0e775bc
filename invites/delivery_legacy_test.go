package invites_test

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/store"
)

// A delivery written in the layout before the queue package (its own
// buckets, invites_deliveries) is converted when Herald opens the database:
// same id, attempts and state; it is then attempted again, and found by invite.
func TestDeliveriesConvertedFromTheOldLayout(t *testing.T) {
	// bbolt: the old layout is a set of bbolt buckets; its conversion runs on bbolt files only.
	e := start(t, testenv.Bolt)
	tok := e.register(t, alice)
	e.HS.SetDown(true)
	dl := e.delivery(t, tok, "legacy@example.org", "@legacy:hs2.test")
	var old *invites.Delivery
	waitCond(t, "a failed attempt", func() bool {
		old, _ = e.App.Deliveries().Get(dl.ID)
		return old != nil && len(old.Attempts) >= 1
	})
	e.Restart(t, func(*config.Config) {
		// Herald is stopped: rewrite its onbind queue as the old layout.
		db, err := bolt.Open(filepath.Join(e.DataDir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range []string{"onbind", "onbind_data", "onbind_due", "onbind_state", "onbind_fail", "onbind_count", "onbind_invite", "onbind_address"} {
				if err := tx.DeleteBucket([]byte(b)); err != nil {
					return err
				}
			}
			b, err := tx.CreateBucket([]byte("invites_deliveries"))
			if err != nil {
				return err
			}
			for _, name := range []string{"invites_delivery_due", "invites_delivery_state", "invites_delivery_invite"} {
				if _, err := tx.CreateBucket([]byte(name)); err != nil {
					return err
				}
			}
			raw, err := json.Marshal(old)
			if err != nil {
				return err
			}
			if err := b.SetSequence(old.ID); err != nil {
				return err
			}
			return b.Put(store.U64(old.ID), raw)
		})
		if err != nil {
			t.Fatal(err)
		}
		e.HS.SetDown(false)
	})
	got, err := e.App.Deliveries().Get(old.ID)
	if err != nil || got.MXID != old.MXID || len(got.Attempts) < len(old.Attempts) || got.Attempts[0].Reply != old.Attempts[0].Reply {
		t.Fatalf("after conversion: %+v %v", got, err)
	}
	e.Clock.Advance(time.Hour)
	e.App.Deliveries().Wake()
	// The test homeserver has no onbind endpoint: its 404 finishes the
	// delivery, one attempt after those converted.
	waitCond(t, "the converted delivery to be attempted again", func() bool {
		d, err := e.App.Deliveries().Get(old.ID)
		return err == nil && d.State == invites.DeliveryFailed && len(d.Attempts) == len(old.Attempts)+1 && d.Attempts[len(d.Attempts)-1].Status == 404
	})
	if byInv, err := e.App.Deliveries().ByInvite(old.InviteIDs[0]); err != nil || len(byInv) != 1 || byInv[0].ID != old.ID {
		t.Fatalf("ByInvite after conversion: %+v %v", byInv, err)
	}
	e.App.DB().View(func(tx *store.Tx) error {
		if tx.Bolt.Bucket([]byte("invites_deliveries")) != nil {
			t.Error("old bucket left behind")
		}
		return nil
	})
}
