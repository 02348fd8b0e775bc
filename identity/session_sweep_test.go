package identity_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

// Every requestToken (anonymous on v1) leaves a session and a
// de-duplication key; the sweep deletes them once they expired one
// lifetime ago, and keeps a session still in use.
func TestDeleteExpiredSessions(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@sess:hs.test")
	request := func(secret, email string) string {
		t.Helper()
		status, body := e.Do(t, http.MethodPost, v2+"/validate/email/requestToken",
			map[string]any{"client_secret": secret, "email": email, "send_attempt": 1}, tok)
		if status != http.StatusOK {
			t.Fatalf("requestToken: %d %s", status, body)
		}
		var r struct{ SID string }
		_ = json.Unmarshal(body, &r)
		return r.SID
	}
	count := func() (sessions, keys int) {
		err := e.App.DB().View(func(tx *store.Tx) error {
			if tx.PG != nil {
				return tx.PG.QueryRow(tx.Context(), `SELECT (SELECT count(*) FROM identity_sessions), (SELECT count(*) FROM identity_session_keys)`).Scan(&sessions, &keys)
			}
			sessions = tx.Bolt.Bucket([]byte("identity_sessions")).Stats().KeyN
			keys = tx.Bolt.Bucket([]byte("identity_session_keys")).Stats().KeyN
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	// The server's own first pass must not come after the clock moves.
	e.WaitFirstSweeps(t, "session-sweep")
	request("secret-old-1", "old1@example.org")
	request("secret-old-2", "old2@example.org")
	svc := e.App.Identity()
	if n, err := svc.DeleteExpiredSessions(e.Clock.Now()); err != nil || n != 0 {
		t.Fatalf("sweep of fresh sessions: %d deleted, %v", n, err)
	}
	lifetime := e.Config.Validation.SessionLifetime.D()
	e.Clock.Advance(lifetime + time.Minute) // expired, kept one more lifetime
	if n, err := svc.DeleteExpiredSessions(e.Clock.Now()); err != nil || n != 0 {
		t.Fatalf("sweep just after expiry: %d deleted, %v", n, err)
	}
	e.Clock.Advance(lifetime)
	keep := request("secret-new", "new@example.org")
	if n, err := svc.DeleteExpiredSessions(e.Clock.Now()); err != nil || n != 2 {
		t.Fatalf("sweep two lifetimes on: %d deleted, %v; want 2", n, err)
	}
	if s, k := count(); s != 1 || k != 1 {
		t.Fatalf("%d sessions and %d keys left, want the new one of each", s, k)
	}
	// The kept session still answers (not validated yet: 400, not 404).
	status, body := e.Do(t, http.MethodGet, v2+"/3pid/getValidated3pid?sid="+keep+"&client_secret=secret-new", nil, tok)
	expectError(t, status, body, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
}
