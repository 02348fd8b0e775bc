package identity

import (
	"context"
	"errors"
	"time"

	"github.com/herald-im/herald/store"
)

// The console's read model and service for email bindings. The admin
// console uses these as they are (BindingView's JSON is the console API's)
// through its Bindings interface, which Console implements.

// ErrNotBound means the address has no binding to remove.
var ErrNotBound = errors.New("identity: the address is not bound")

// BindingView is an email address bound to a Matrix ID, as the console
// shows it.
type BindingView struct {
	Address string    `json:"address"`
	MXID    string    `json:"mxid"`
	Bound   time.Time `json:"bound,omitzero"`
}

// Console is the console's service over the email bindings.
type Console struct{ s *Service }

// NewConsole returns the console's service over s.
func NewConsole(s *Service) *Console { return &Console{s: s} }

// BindingFor returns the address's binding, or nil when it is unbound.
func (c *Console) BindingFor(_ context.Context, address string) (*BindingView, error) {
	b, err := c.s.BindingFor("email", address)
	if err != nil || b == nil {
		return nil, err
	}
	return &BindingView{Address: b.Address, MXID: b.MXID, Bound: b.TS}, nil
}

// Unbind removes the address's binding (ErrNotBound when it has none).
func (c *Console) Unbind(ctx context.Context, address string) error {
	return c.s.bindingWrite(ctx, func(tx *store.Tx) error {
		b, err := c.s.BindingTx(tx, "email", address)
		if err != nil {
			return err
		}
		if b == nil {
			return ErrNotBound
		}
		if err := c.s.DeleteBinding(tx, "email", address); err != nil {
			return err
		}
		// An unbind (or erasure) from the console leaves the address's
		// lookup hash nowhere, not even in the replicas' change log.
		return c.s.st.forgetHashChanges(tx)
	})
}

// EraseSessions deletes the address's email validation sessions.
func (c *Console) EraseSessions(_ context.Context, address string) (int, error) {
	return c.s.EraseSessions(address)
}
