package identity

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

// A populated bbolt database copied to PostgreSQL sums the same, kind by
// kind, and the copy serves: bindings found by lookups with the same pepper,
// tokens valid, terms accepted, sessions validated, the count right.
func TestCopyStorageToPostgres(t *testing.T) {
	clock := newClock()
	src := storetest.Open(t, store.BackendBolt)
	s := newTestService(t, src, clock, 10*time.Hour)
	const bindings = 2345 // more than two copy batches
	err := src.Update(func(tx *store.Tx) error {
		for i := range bindings {
			if err := s.PutBinding(tx, Binding{Medium: "email", Address: fmt.Sprintf("user%04d@example.org", i), MXID: fmt.Sprintf("@user%04d:example.org", i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stale, _ := s.CreateAccount("@gone:example.org")
	clock.Add(11 * time.Hour)
	if err := s.useToken(stale, clock.Now().UTC()); err != nil { // becomes a tombstone
		t.Fatal(err)
	}
	tok2, _ := s.CreateAccount("@user0002:example.org")
	if err := s.AcceptTerms("@user0002:example.org", []string{"https://example.org/privacy-2"}); err != nil {
		t.Fatal(err)
	}
	se := &Session{SID: "sid1", SecretHash: sha("secret"), Medium: "email", Address: "user0003@example.org", SendAttempt: 2,
		TokenHashes: [][]byte{sha("a"), sha("b")}, NextLink: "https://example.org/next", Created: clock.Now(), Updated: clock.Now(), Validated: clock.Now()}
	if err := src.Update(func(tx *store.Tx) error {
		if err := s.st.putSession(tx, se); err != nil {
			return err
		}
		return s.st.putSessionKey(tx, sha("secret", "email", se.Address), se.SID)
	}); err != nil {
		t.Fatal(err)
	}
	pepper, _, _ := s.Pepper()

	dst := storetest.Open(t, store.BackendPostgres)
	ctx := context.Background()
	copied := 0
	if err := CopyStorage(ctx, src, dst, func(n int) {
		if n > store.CopyBatch {
			t.Errorf("a batch of %d records", n)
		}
		copied += n
	}); err != nil {
		t.Fatal(err)
	}
	// pepper, bindings, hashes, 2 accounts, 1 user's terms, 1 session, 1 key
	if want := 1 + 2*bindings + 2 + 1 + 1 + 1; copied != want {
		t.Errorf("progress counted %d records, want %d", copied, want)
	}
	want, err := SumStorage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := SumStorage(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sums differ:\nbbolt    %v\npostgres %v", want, got)
	}
	for _, sum := range got {
		if sum.Table == kindBindings && sum.Count != bindings {
			t.Errorf("%s: %d records", sum.Table, sum.Count)
		}
	}

	p := newTestService(t, dst, clock, 10*time.Hour)
	if cur, _, _ := p.Pepper(); cur != pepper {
		t.Fatalf("pepper on the copy %q, was %q", cur, pepper)
	}
	if got := lookupOne(t, p, "user1234@example.org"); got != "@user1234:example.org" {
		t.Fatalf("lookup on the copy = %q", got)
	}
	if n, err := p.BindingCount(); err != nil || n != bindings {
		t.Fatalf("count on the copy = %d, %v", n, err)
	}
	if a, err := p.AccountByToken(tok2); err != nil || a.UserID != "@user0002:example.org" {
		t.Fatalf("token on the copy: %+v, %v", a, err)
	}
	if _, err := p.AccountByToken(stale); err != ErrTokenExpired {
		t.Fatalf("tombstone on the copy: %v", err)
	}
	if ok, _ := p.HasAcceptedTerms("@user0002:example.org"); !ok {
		t.Fatal("terms not accepted on the copy")
	}
	if got, err := p.ValidatedSession("sid1", "secret"); err != nil || got.Address != se.Address {
		t.Fatalf("session on the copy: %+v, %v", got, err)
	}
}
