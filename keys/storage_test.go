package keys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The ephemeral key store behaves the same on both backends: put, lookups
// in the other base64 alphabets, invalidation, expiry and deletion.
func TestEphemeralStorage(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		e, err := OpenEphemeral(db, func() time.Time { return now })
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := NewEphemeralKey()
		p := EncodeBase64(pub)
		pub2, _ := NewEphemeralKey()
		p2 := EncodeBase64(pub2)
		if err := db.Update(func(tx *store.Tx) error {
			if err := e.Put(tx, p, "inv1", time.Time{}); err != nil {
				return err
			}
			return e.Put(tx, p2, "inv2", now.Add(time.Hour))
		}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			pub  string
			want bool
		}{{p, true}, {p + "=", true}, {encodeURL(pub), true}, {p2, true}, {"nope", false}} {
			if ok, err := e.IsValid(c.pub); err != nil || ok != c.want {
				t.Errorf("IsValid(%q) = %v, %v; want %v", c.pub, ok, err, c.want)
			}
		}
		if err := db.View(func(tx *store.Tx) error {
			if ref, ok, err := e.EphemeralRef(tx, encodeURL(pub)); err != nil || !ok || ref != "inv1" {
				t.Errorf("EphemeralRef(url form) = %q, %v, %v", ref, ok, err)
			}
			if !e.Has(tx, p) || e.Has(tx, p+"=") {
				t.Error("Has answers for other forms than the stored one")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Hour) // p2 expired
		if ok, _ := e.IsValid(p2); ok {
			t.Error("an expired ephemeral key is valid")
		}
		if err := db.Update(func(tx *store.Tx) error { return e.Invalidate(tx, p) }); err != nil {
			t.Fatal(err)
		}
		if ok, _ := e.IsValid(p); ok {
			t.Error("an invalidated ephemeral key is valid")
		}
		if err := db.Update(func(tx *store.Tx) error { return e.Delete(tx, p) }); err != nil {
			t.Fatal(err)
		}
		if err := db.View(func(tx *store.Tx) error {
			if e.Has(tx, p) || !e.Has(tx, p2) {
				t.Error("Delete removed the wrong record")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// Two replicas starting on an empty database agree on one first key; a key
// rotated on one signs on the other once it reloads on the NOTIFY signal,
// and a key retired on the other stops being published on the first.
func TestRingAcrossReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	a, b := storetest.OpenPostgres(t, dsn), storetest.OpenPostgres(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ra, rb *Ring
	var ea, eb error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ra, ea = OpenRingDB(ctx, a, "herald.test") }()
	go func() { defer wg.Done(); rb, eb = OpenRingDB(ctx, b, "herald.test") }()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	first := ra.Current()
	if rb.Current().ID != first.ID || len(ra.IDs()) != 1 {
		t.Fatalf("replicas started on different first keys: %s, %s", first.ID, rb.Current().ID)
	}

	// Replica b follows changes as the wiring does: NOTIFY, with a long
	// polling fallback so the notification is what is tested.
	sig := b.PG().Subscribe(ctx, NotifyChannel, time.Hour)
	<-sig // the listening connection is up
	waitFor := func(r *Ring, what string, cond func() bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !cond() {
			select {
			case <-sig:
				if err := r.Reload(ctx, false); err != nil {
					t.Fatal(err)
				}
			case <-deadline:
				t.Fatalf("replica b: %s not seen within 10 s", what)
			}
		}
	}
	k, err := ra.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(rb, "rotation", func() bool { return rb.Current().ID == k.ID })
	sigA, err := rb.Sign(map[string]any{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	if raw, _ := json.Marshal(sigA); !strings.Contains(string(raw), `"`+k.ID+`"`) {
		t.Errorf("replica b signs with %s, want %s", raw, k.ID)
	}
	if err := rb.Retire(first.ID); err != nil {
		t.Fatal(err)
	}
	// Replica a polls (the fallback path): the stamp changed, so it reloads.
	if err := ra.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	if _, ok := ra.Published(first.ID); ok || ra.IsValidPublic(first.PublicBase64()) {
		t.Error("a key retired on replica b is still published on replica a")
	}
	if err := ra.Retire(k.ID); err == nil {
		t.Error("the current key was retired")
	}
	if err := ra.Retire("ed25519:nope"); err == nil {
		t.Error("retiring an unknown key succeeded")
	}
	// Imported keys: the same key again changes nothing, another is refused.
	_, priv, _ := ed25519GenerateKey()
	if added, err := ra.AddImported("ed25519:0", priv, time.Now()); err != nil || !added {
		t.Fatalf("AddImported = %v, %v", added, err)
	}
	if added, err := rb.AddImported("ed25519:0", priv, time.Now()); err != nil || added {
		t.Fatalf("AddImported again on replica b = %v, %v", added, err)
	}
	_, other, _ := ed25519GenerateKey()
	if _, err := rb.AddImported("ed25519:0", other, time.Now()); err == nil {
		t.Error("a different key under an existing id was accepted")
	}
}

// A bbolt deployment's keys (data_dir/keys and the ephemeral bucket) copy
// into PostgreSQL with equal sums, and the copy serves.
func TestCopyStorage(t *testing.T) {
	ctx := context.Background()
	src := storetest.Open(t, store.BackendBolt)
	dst := storetest.Open(t, store.BackendPostgres)
	now := time.Now()
	e, err := OpenEphemeral(src, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	var pubs []string
	for i := range 2500 {
		pub, _ := NewEphemeralKey()
		p := EncodeBase64(pub)
		pubs = append(pubs, p)
		if err := src.Update(func(tx *store.Tx) error {
			exp := time.Time{}
			if i%2 == 0 {
				exp = now.Add(time.Duration(i) * time.Minute).Add(123 * time.Nanosecond)
			}
			if err := e.Put(tx, p, "ref", exp); err != nil {
				return err
			}
			if i%3 == 0 {
				return e.Invalidate(tx, p)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	ring, err := OpenRing(t.TempDir(), "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	old := ring.Current().ID
	if _, err := ring.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := ring.Retire(old); err != nil {
		t.Fatal(err)
	}
	var copied int
	if err := CopyStorage(ctx, src, dst, func(n int) { copied += n }); err != nil {
		t.Fatal(err)
	}
	if err := CopyRing(ctx, ring, dst); err != nil {
		t.Fatal(err)
	}
	if copied != len(pubs) {
		t.Errorf("progress counted %d, want %d", copied, len(pubs))
	}
	s1, err := SumStorage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := SumStorage(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s1, s2) || s1[0].Count != int64(len(pubs)) {
		t.Errorf("sums differ: %+v vs %+v", s1, s2)
	}
	pgRing, err := LoadRingDB(ctx, dst, "herald.test")
	if err != nil {
		t.Fatal(err)
	}
	if a, b := RingSum(ring), RingSum(pgRing); a != b || a.Count != 2 {
		t.Errorf("ring sums differ: %+v vs %+v", a, b)
	}
	if pgRing.Current().ID != ring.Current().ID {
		t.Error("the copy has another current key")
	}
	pe, _ := OpenEphemeral(dst, func() time.Time { return now })
	for i, p := range pubs[:10] {
		want, _ := e.IsValid(p)
		if got, err := pe.IsValid(p); err != nil || got != want {
			t.Errorf("key %d: valid %v on the copy, %v on the source (%v)", i, got, want, err)
		}
	}
}

func ed25519GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(nil)
}
