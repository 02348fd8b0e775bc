package identity_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// The in-memory lookup index (which spares the database seek) never
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
	if err := id.DB().Update(func(tx *store.Tx) error { return id.DeleteBinding(tx, "email", "u0@example.org") }); err != nil {
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

// After every kind of change (bind, rebind to another mxid, unbind, console
// erase, import, pepper rotation, restart, and binds and unbinds of the same
// addresses racing each other), a hashed lookup of every address answers
// exactly what the database holds.
func TestLookupIndexAnswersAsTheDatabase(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@looker:hs.test")
	var addrs []string
	for i := 0; i < 400; i++ {
		addrs = append(addrs, fmt.Sprintf("a%d@example.org", i))
	}
	check := func(step string) {
		t.Helper()
		id := e.App.Identity()
		pepper, _, err := id.Pepper()
		if err != nil {
			t.Fatal(err)
		}
		hashes := make([]string, len(addrs))
		want := map[string]any{}
		for i, a := range addrs {
			hashes[i] = identity.LookupHash(a, "email", pepper)
			b, err := id.BindingFor("email", a)
			if err != nil {
				t.Fatal(err)
			}
			if b != nil {
				want[hashes[i]] = b.MXID
			}
		}
		// Twice: the first lookup after a drop seeks the database and builds
		// the index, the second answers from the index.
		for round := 0; round < 2; round++ {
			status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": hashes})
			if status != http.StatusOK {
				t.Fatalf("%s: lookup: %d %v", step, status, m)
			}
			got, _ := m["mappings"].(map[string]any)
			if len(got) != len(want) {
				t.Fatalf("%s, round %d: %d mappings, the database holds %d", step, round, len(got), len(want))
			}
			for h, mx := range want {
				if got[h] != mx {
					t.Fatalf("%s, round %d: %s answered %v, the database holds %v", step, round, h, got[h], mx)
				}
			}
		}
	}
	check("empty")
	for i := 0; i < 300; i++ {
		bindAll(t, e, addrs[i], fmt.Sprintf("@a%d:hs.test", i))
	}
	check("bind")
	bindAll(t, e, addrs[1], "@someone-else:hs.test", addrs[300], "@a300:hs.test")
	check("rebind to another mxid")
	id := e.App.Identity()
	if err := id.DB().Update(func(tx *store.Tx) error { return id.DeleteBinding(tx, "email", addrs[2]) }); err != nil {
		t.Fatal(err)
	}
	check("unbind")
	if err := identity.NewConsole(id).Unbind(context.Background(), addrs[3]); err != nil {
		t.Fatal(err)
	}
	check("console erase")
	err := id.DB().Update(func(tx *store.Tx) error {
		bi, err := id.ImportBindings(tx)
		if err != nil {
			return err
		}
		for i := 350; i < 360; i++ {
			if _, err := bi.Add(identity.Binding{Medium: "email", Address: addrs[i], MXID: fmt.Sprintf("@imported%d:hs.test", i)}); err != nil {
				return err
			}
		}
		return bi.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	check("import")
	if err := id.RotatePepper(); err != nil {
		t.Fatal(err)
	}
	check("pepper rotation")
	bindAll(t, e, addrs[4], "@after-rotation:hs.test")
	check("bind after rotation")

	// Writers racing on the same addresses, lookups running beside them:
	// commit hooks may run out of commit order, the index must still end as
	// the database.
	// On PostgreSQL every index change bumps one generation row, so four
	// writers in a tight loop may run a write out of its retries
	// (pgstore.ErrContention, answered 429 "try again"): that write did not
	// happen, and the index must still end as the database. Most must land.
	var wg sync.WaitGroup
	var busy atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				a := addrs[(i*7+w)%20]
				err := id.DB().Update(func(tx *store.Tx) error {
					if (i+w)%3 == 0 {
						return id.DeleteBinding(tx, "email", a)
					}
					return id.PutBinding(tx, identity.Binding{Medium: "email", Address: a, MXID: fmt.Sprintf("@w%d-%d:hs.test", w, i)})
				})
				if errors.Is(err, pgstore.ErrContention) {
					busy.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	pepper, _, _ := id.Pepper()
	for i := 0; i < 20; i++ {
		status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{identity.LookupHash(addrs[i], "email", pepper)}})
		if status != http.StatusOK {
			t.Fatalf("lookup during writes: %d %v", status, m)
		}
	}
	wg.Wait()
	if n := busy.Load(); n > 4*150/10 {
		t.Errorf("%d of %d racing writes ran out of retries", n, 4*150)
	}
	check("racing binds and unbinds")

	e.Restart(t)
	check("restart")
	bindAll(t, e, addrs[5], "@after-restart:hs.test")
	check("bind after restart")
}
