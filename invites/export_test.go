package invites

// SetStoreTxHook makes f run at the end of store-invite's write transaction
// (after every write); its error aborts the transaction. It returns a func
// that removes the hook.
func SetStoreTxHook(f func() error) (restore func()) {
	storeTxHook = f
	return func() { storeTxHook = nil }
}
