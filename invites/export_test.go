package invites

// SetStoreTxHook makes f run at the end of store-invite's write transaction
// (after every write); its error aborts the transaction. It returns a func
// that removes the hook.
func SetStoreTxHook(f func() error) (restore func()) {
	storeTxHook = f
	return func() { storeTxHook = nil }
}

// SetDeliveryLoader replaces how the worker loads a due delivery. It returns
// a func that restores the real one.
func SetDeliveryLoader(f func(d *Deliveries, id uint64) (*Delivery, error)) (restore func()) {
	old := loadDelivery
	loadDelivery = f
	return func() { loadDelivery = old }
}
