package identity

// BindingCount is how many addresses are bound. bbolt keeps each page's key
// count, so this reads the bucket's pages, not its records; PostgreSQL keeps
// a counter (with delta rows), not a COUNT(*) over the bindings.
func (s *Service) BindingCount() (int, error) {
	return s.st.countBindings(s.db)
}
