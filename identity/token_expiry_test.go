package identity_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

const day = 24 * time.Hour

func lastTxID(t *testing.T, e *testenv.Env) int {
	t.Helper()
	var id int
	if err := e.App.DB().View(func(tx *store.Tx) error { id = tx.Bolt.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// The attack: an access token leaked once worked forever. Now a token unused
// for account.token_idle_lifetime (default 90 days) answers 401
// M_UNKNOWN_TOKEN, while one in regular use keeps working.
func TestAccessTokenIdleExpiry(t *testing.T) {
	e := testenv.Start(t)
	used := e.Register(t, "@alice:hs.test")
	idle := e.Register(t, "@alice:hs.test")
	get := func(tok string) (int, []byte) { return e.Do(t, http.MethodGet, v2+"/account", nil, tok) }

	// Used every 80 days for a year: it keeps working.
	for range 4 {
		e.Clock.Advance(80 * day)
		if status, body := get(used); status != http.StatusOK {
			t.Fatalf("token used every 80 days: %d %s", status, body)
		}
	}
	// Unused for 320 days: expired, and stays so, across a restart too.
	for range 2 {
		status, body := get(idle)
		expectError(t, status, body, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	}
	e.Restart(t)
	status, body := get(idle)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	if _, err := e.App.Identity().AccountByToken(idle); !errors.Is(err, identity.ErrTokenExpired) {
		t.Fatalf("AccountByToken(expired) = %v", err)
	}
	// Just past the lifetime is enough.
	e.Clock.Advance(90*day + time.Minute)
	status, body = get(used)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	// A missing token is still M_UNAUTHORIZED, an unknown one too.
	status, body = get("")
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	status, body = get("never-issued")
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
}

// Recording use must not write to the database on every request: at most
// once an hour per token.
func TestAccessTokenUseRecordedCoarsely(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@alice:hs.test")
	// The account record is compared, not the database's transaction
	// count: background work (sweeps, the console's hand-over watch) may
	// write meanwhile.
	a0, err := e.App.Identity().AccountByToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		e.Clock.Advance(30 * time.Second) // 50 minutes in all
		if status, body := e.Do(t, http.MethodGet, v2+"/account", nil, tok); status != http.StatusOK {
			t.Fatalf("%d %s", status, body)
		}
	}
	if a, err := e.App.Identity().AccountByToken(tok); err != nil || !a.LastUsed.Equal(a0.LastUsed) {
		t.Fatalf("last use rewritten within the hour: %v then %v (%v)", a0.LastUsed, a.LastUsed, err)
	}
	e.Clock.Advance(2 * time.Hour)
	first := e.Clock.Now()
	for range 50 {
		e.Clock.Advance(30 * time.Second)
		if status, body := e.Do(t, http.MethodGet, v2+"/account", nil, tok); status != http.StatusOK {
			t.Fatalf("%d %s", status, body)
		}
	}
	a1, err := e.App.Identity().AccountByToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	// Recorded at the first request past the hour, and not again in the
	// 25 minutes of requests after it.
	if a1.LastUsed.Before(first) || a1.LastUsed.After(first.Add(time.Minute)) {
		t.Fatalf("last use after 2 h: %v, want the first request's time %v", a1.LastUsed, first)
	}
}

// Tokens nobody presents again are swept: expired ones keep only a tombstone
// (no user ID) for one more lifetime, then nothing is left. Records written
// before last use was recorded start their clock at the first sweep instead
// of expiring at once.
func TestExpireIdleTokensSweep(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@sweep:hs.test")
	legacy := []byte("legacy-token-hash-0123456789abcdef")
	err := e.App.DB().Update(func(tx *store.Tx) error {
		if tx.PG != nil { // a row without last_used
			_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_accounts (token_hash, user_id, created) VALUES ($1, $2, $3)`,
				legacy, "@old:hs.test", e.Clock.Now().Add(-400*day))
			return err
		}
		raw, _ := json.Marshal(map[string]any{"user_id": "@old:hs.test", "created": e.Clock.Now().Add(-400 * day)})
		return tx.Bolt.Bucket([]byte("identity_accounts")).Put(legacy, raw)
	})
	if err != nil {
		t.Fatal(err)
	}
	svc := e.App.Identity()
	if exp, del, err := svc.ExpireIdleTokens(e.Clock.Now()); err != nil || exp != 0 || del != 0 {
		t.Fatalf("first sweep: %d expired, %d deleted, %v", exp, del, err)
	}
	e.Clock.Advance(91 * day)
	if exp, del, err := svc.ExpireIdleTokens(e.Clock.Now()); err != nil || exp != 2 || del != 0 {
		t.Fatalf("sweep after 91 days: %d expired, %d deleted, %v; want 2, 0", exp, del, err)
	}
	if !dbLacks(t, e, "@sweep:hs.test") || !dbLacks(t, e, "@old:hs.test") {
		t.Fatal("an expired token's record still names its user")
	}
	status, body := e.Do(t, http.MethodGet, v2+"/account", nil, tok)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	e.Clock.Advance(91 * day)
	if exp, del, err := svc.ExpireIdleTokens(e.Clock.Now()); err != nil || exp != 0 || del != 2 {
		t.Fatalf("sweep a lifetime later: %d expired, %d deleted, %v; want 0, 2", exp, del, err)
	}
	var n int
	err = e.App.DB().View(func(tx *store.Tx) error {
		if tx.PG != nil {
			return tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM identity_accounts`).Scan(&n)
		}
		n = tx.Bolt.Bucket([]byte("identity_accounts")).Stats().KeyN
		return nil
	})
	if err != nil || n != 0 {
		t.Fatalf("%d account records left", n)
	}
}

func dbLacks(t *testing.T, e *testenv.Env, s string) bool {
	t.Helper()
	found := false
	err := e.App.DB().View(func(tx *store.Tx) error {
		if tx.PG != nil {
			return tx.PG.QueryRow(tx.Context(), `SELECT EXISTS (SELECT 1 FROM identity_accounts x WHERE strpos(x::text, $1) > 0)`, s).Scan(&found)
		}
		return tx.Bolt.Bucket([]byte("identity_accounts")).ForEach(func(_, v []byte) error {
			found = found || bytes.Contains(v, []byte(s))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return !found
}
