package invites

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/store"
)

// Methods the admin console needs (package admin, through internal/server).

// Resend queues the invite's email again, rendered afresh, for the admin
// console. It follows the same rule as a repeated store-invite (resend.go);
// it returns the new mail's id.
func (s *Service) Resend(id uint64) (uint64, error) {
	inv, err := s.Get(id)
	if err != nil {
		return 0, err
	}
	return s.resend(inv, "admin console")
}

// EraseAddress deletes every invite to address (email), with its indexes and
// ephemeral key, for data-protection erasure. It returns how many it deleted.
func (s *Service) EraseAddress(address string) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		all, err := s.ForAddress(tx, "email", address)
		if err != nil {
			return err
		}
		for _, inv := range all {
			if err := s.Delete(tx, inv.ID); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// EraseAddress deletes every delivery for address (email) with its history
// and indexes, for data-protection erasure. It returns how many it deleted.
func (d *Deliveries) EraseAddress(address string) (int, error) {
	address = normalize("email", address)
	n := 0
	err := d.db.Update(func(tx *bolt.Tx) error {
		n = 0
		var doomed []*Delivery
		err := tx.Bucket(bktDeliveries).ForEach(func(_, v []byte) error {
			dl := new(Delivery)
			if err := json.Unmarshal(v, dl); err != nil {
				return err
			}
			if dl.Medium == "email" && dl.Address == address || dl.Medium == "" && dl.Address == address {
				doomed = append(doomed, dl)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, dl := range doomed {
			if dl.State == DeliveryPending {
				if err := tx.Bucket(bktDeliveryDue).Delete(deliveryDueKey(dl)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bktDeliveryState).Delete(deliveryStateKey(dl.State, dl.ID)); err != nil {
				return err
			}
			for _, inv := range dl.InviteIDs {
				if err := tx.Bucket(bktDeliveryInvite).Delete(append(store.U64(inv), store.U64(dl.ID)...)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bktDeliveries).Delete(store.U64(dl.ID)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
