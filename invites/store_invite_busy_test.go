package invites_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/pgstore"
)

// When store-invite's transaction cannot commit for contention
// (pgstore.ErrContention: PostgreSQL serialization failures outlasting
// store.DB's retries) the homeserver is told to try again: 429
// M_LIMIT_EXCEEDED with retry_after_ms, nothing stored, never a 500. The
// retries themselves are TestStoreInviteContentionIsBusy's.
func TestStoreInviteBusyAnswers429(t *testing.T) {
	var busy atomic.Bool
	e := startWith(t, server.Options{StoreInviteTxHook: func() error {
		if busy.Load() {
			return fmt.Errorf("store-invite: %w", pgstore.ErrContention)
		}
		return nil
	}})
	tok := e.register(t, alice)
	busy.Store(true)
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", inviteBody(alice, "busy@example.org"), tok)
	busy.Store(false)
	body := errcode(t, raw)
	if status != http.StatusTooManyRequests || body["errcode"] != "M_LIMIT_EXCEEDED" || body["retry_after_ms"] != float64(500) ||
		strings.Contains(string(raw), "pgstore") {
		t.Fatalf("store-invite under contention: %d %s", status, raw)
	}
	if _, total, _ := e.App.Invites().List(invites.Filter{}); total != 0 {
		t.Fatalf("%d invites stored by a store-invite that could not commit", total)
	}
	if queued, _ := e.App.Mailer().List(mailer.Filter{}); len(queued) != 0 {
		t.Fatalf("mail queued by a store-invite that could not commit: %d", len(queued))
	}
	// Tried again, it is stored.
	e.storeInvite(t, tok, inviteBody(alice, "busy@example.org"))
	if _, total, _ := e.App.Invites().List(invites.Filter{}); total != 1 {
		t.Fatalf("%d invites after the retry, want 1", total)
	}
}
