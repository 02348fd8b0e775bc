package identity_test

import (
	"fmt"
	"net/http"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/testenv"
)

// The lookup filter (which spares the index seek of unbound hashes) never
// hides a binding: not one made after it was built, not one made under a new
// pepper, and an unbinding still answers nothing.
func TestLookupFilterKeepsEveryBinding(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@looker:hs.test")
	id := e.App.Identity()
	var pairs []string
	for i := 0; i < 300; i++ {
		pairs = append(pairs, fmt.Sprintf("u%d@example.org", i), fmt.Sprintf("@u%d:hs.test", i))
	}
	bindAll(t, e, pairs...)
	ask := func(addrs ...string) map[string]any {
		t.Helper()
		pepper, _, err := id.Pepper()
		if err != nil {
			t.Fatal(err)
		}
		var hashes []string
		for _, a := range addrs {
			hashes = append(hashes, identity.LookupHash(a, "email", pepper))
		}
		// Unbound hashes beside them, which the filter answers alone.
		for i := 0; i < 200; i++ {
			hashes = append(hashes, identity.LookupHash(fmt.Sprintf("nobody%d@example.org", i), "email", pepper))
		}
		status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": hashes})
		if status != http.StatusOK {
			t.Fatalf("lookup: %d %v", status, m)
		}
		mp, _ := m["mappings"].(map[string]any)
		out := map[string]any{}
		for i, a := range addrs {
			if v, ok := mp[hashes[i]]; ok {
				out[a] = v
			}
		}
		if len(mp) != len(out) {
			t.Errorf("an unbound hash was answered: %v", mp)
		}
		return out
	}
	// The first lookup builds the filter; the next ones use it.
	for round := 0; round < 2; round++ {
		got := ask("u0@example.org", "u299@example.org", "u150@example.org")
		if len(got) != 3 || got["u299@example.org"] != "@u299:hs.test" {
			t.Fatalf("round %d: %v", round, got)
		}
	}
	bindAll(t, e, "late@example.org", "@late:hs.test")
	if got := ask("late@example.org"); got["late@example.org"] != "@late:hs.test" {
		t.Fatalf("a binding made after the filter was built: %v", got)
	}
	if err := id.DB().Update(func(tx *bolt.Tx) error { return id.DeleteBinding(tx, "email", "u0@example.org") }); err != nil {
		t.Fatal(err)
	}
	if got := ask("u0@example.org", "u1@example.org"); len(got) != 1 || got["u1@example.org"] != "@u1:hs.test" {
		t.Fatalf("after an unbind: %v", got)
	}
	if err := id.RotatePepper(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		if got := ask("late@example.org", "u299@example.org"); len(got) != 2 {
			t.Fatalf("round %d after the pepper rotation: %v", round, got)
		}
	}
	bindAll(t, e, "later@example.org", "@later:hs.test")
	if got := ask("later@example.org"); len(got) != 1 {
		t.Fatalf("a binding after the rotation: %v", got)
	}
}
