package invites

import (
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
	err := s.db.Update(func(tx *store.Tx) error {
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
	err := d.db.Update(func(tx *store.Tx) error {
		n = 0
		ids, err := d.s.st.deliveriesTo(tx, "email", address)
		if err != nil {
			return err
		}
		if err := d.q.DeleteTx(tx, ids...); err != nil {
			return err
		}
		n = len(ids)
		return nil
	})
	return n, err
}
