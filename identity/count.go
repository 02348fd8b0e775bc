package identity

import "github.com/herald-im/herald/store"

// BindingCount is how many addresses are bound. bbolt keeps each page's key
// count, so this reads the bucket's pages, not its records.
func (s *Service) BindingCount() (int, error) {
	var n int
	err := s.db.View(func(tx *store.Tx) error {
		n = tx.Bolt.Bucket(bindingsBucket).Stats().KeyN
		return nil
	})
	return n, err
}
