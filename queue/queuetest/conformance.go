// Package queuetest is the contract of queue.Backend, written once as tests:
// every backend's own test calls RunConformance with its constructor.
package queuetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/herald-im/herald/queue"
)

// NewBackend returns an empty backend for one subtest, and a function that
// closes it and opens it again on the same storage (a restart).
type NewBackend func(t *testing.T) (be queue.Backend, reopen func() queue.Backend)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func enqueue(t *testing.T, be queue.Backend, r *queue.Record) uint64 {
	t.Helper()
	if r.State == "" {
		r.State = queue.Pending
	}
	if r.Created.IsZero() {
		r.Created, r.RetryFrom = t0, t0
	}
	if err := be.Write(context.Background(), func(tx queue.Tx) error { return be.Enqueue(tx, r) }); err != nil {
		t.Fatal(err)
	}
	return r.ID
}

func update(t *testing.T, be queue.Backend, id uint64, fn func(r *queue.Record) error) error {
	t.Helper()
	return be.Write(context.Background(), func(tx queue.Tx) error {
		_, err := be.Update(tx, id, fn)
		return err
	})
}

func ids(rs []queue.Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func claimIDs(cs []queue.Claimed) []uint64 {
	out := make([]uint64, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// RunConformance runs the Backend contract against backends from newBackend.
func RunConformance(t *testing.T, newBackend NewBackend) {
	ctx := context.Background()

	t.Run("EnqueueAssignsIncreasingIDsAndKeepsPayload", func(t *testing.T) {
		be, _ := newBackend(t)
		a := enqueue(t, be, &queue.Record{Kind: "k", NextAttempt: t0, Meta: []byte(`{"to":"a"}`), Data: []byte("payload-a")})
		b := enqueue(t, be, &queue.Record{NextAttempt: t0})
		if a == 0 || b <= a {
			t.Fatalf("ids %d, %d: want increasing, non-zero", a, b)
		}
		r, err := be.Get(ctx, a)
		if err != nil || r.Kind != "k" || string(r.Data) != "payload-a" || string(r.Meta) != `{"to":"a"}` || r.State != queue.Pending {
			t.Fatalf("Get = %+v, %v", r, err)
		}
		if _, err := be.Get(ctx, 999); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("Get(999) = %v, want ErrNotFound", err)
		}
	})

	t.Run("ReadInTheCallersTransaction", func(t *testing.T) {
		be, _ := newBackend(t)
		var a uint64
		err := be.Write(ctx, func(tx queue.Tx) error {
			r := &queue.Record{State: queue.Pending, Created: t0, RetryFrom: t0, NextAttempt: t0, Meta: []byte(`{"to":"a"}`), Data: []byte("payload-a")}
			if err := be.Enqueue(tx, r); err != nil {
				return err
			}
			a = r.ID
			// Visible to its own transaction before the commit.
			got, err := be.Read(tx, a, true)
			if err != nil || string(got.Data) != "payload-a" || string(got.Meta) != `{"to":"a"}` {
				t.Errorf("Read in the enqueueing transaction = %+v, %v", got, err)
			}
			got, err = be.Read(tx, a, false)
			if err != nil || got.Data != nil || got.State != queue.Pending {
				t.Errorf("Read without data = %+v, %v", got, err)
			}
			if _, err := be.Read(tx, a+1000, false); !errors.Is(err, queue.ErrNotFound) {
				t.Errorf("Read(missing) = %v, want ErrNotFound", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("EnqueueRolledBackLeavesNothing", func(t *testing.T) {
		be, _ := newBackend(t)
		boom := errors.New("caller's change failed")
		err := be.Write(ctx, func(tx queue.Tx) error {
			if err := be.Enqueue(tx, &queue.Record{State: queue.Pending, NextAttempt: t0}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Write = %v", err)
		}
		if c, next, _ := be.Claim(ctx, t0.Add(time.Hour), 10, time.Minute); len(c) != 0 || !next.IsZero() {
			t.Fatalf("claimed %v next %v after a rollback", claimIDs(c), next)
		}
		if s, _ := be.Stats(ctx, t0); s != (queue.Counts{}) {
			t.Fatalf("stats %+v after a rollback", s)
		}
	})

	t.Run("ClaimInDueOrderWithLeases", func(t *testing.T) {
		be, _ := newBackend(t)
		late := enqueue(t, be, &queue.Record{NextAttempt: t0.Add(time.Minute)})
		first := enqueue(t, be, &queue.Record{NextAttempt: t0.Add(-time.Minute)})
		second := enqueue(t, be, &queue.Record{NextAttempt: t0})
		c, next, err := be.Claim(ctx, t0, 1, 10*time.Second)
		if err != nil || !equal(claimIDs(c), []uint64{first}) || c[0].Record == nil || next.After(t0) {
			t.Fatalf("Claim(1) = %v next %v %v", claimIDs(c), next, err)
		}
		c, next, _ = be.Claim(ctx, t0, 5, 10*time.Second)
		if !equal(claimIDs(c), []uint64{second}) || !next.Equal(t0.Add(10*time.Second)) {
			t.Fatalf("second Claim = %v next %v; want [%d], next at the first lease's end", claimIDs(c), next, second)
		}
		// A lease that ended makes the record claimable again; the late
		// record comes due.
		c, _, _ = be.Claim(ctx, t0.Add(time.Minute), 5, 10*time.Second)
		if !equal(claimIDs(c), []uint64{first, second, late}) {
			t.Fatalf("after the leases ended: %v", claimIDs(c))
		}
		// Lease with a zero time releases at once.
		if err := be.Lease(first, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if c, _, _ = be.Claim(ctx, t0.Add(time.Minute), 5, 10*time.Second); !equal(claimIDs(c), []uint64{first}) {
			t.Fatalf("after release: %v", claimIDs(c))
		}
		if err := be.Lease(first, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if c, _, _ = be.Claim(ctx, t0.Add(30*time.Minute), 5, 10*time.Second); !equal(claimIDs(c), []uint64{second, late}) {
			t.Fatalf("claimed %v: want the two whose leases ended, not the held-back %d", claimIDs(c), first)
		}
	})

	t.Run("UpdateMovesIndexesAndCounts", func(t *testing.T) {
		be, _ := newBackend(t)
		id := enqueue(t, be, &queue.Record{NextAttempt: t0, Data: []byte("secret")})
		other := enqueue(t, be, &queue.Record{NextAttempt: t0})
		err := update(t, be, id, func(r *queue.Record) error {
			r.Attempts = append(r.Attempts, queue.Attempt{At: t0, Temporary: true, Reply: "421 busy"})
			r.NextAttempt = t0.Add(time.Hour)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if c, next, _ := be.Claim(ctx, t0, 5, time.Second); !equal(claimIDs(c), []uint64{other}) || !next.Equal(t0.Add(time.Hour)) {
			t.Fatalf("after a retry was scheduled: %v next %v", claimIDs(c), next)
		}
		if err := update(t, be, id, func(r *queue.Record) error {
			r.Attempts = append(r.Attempts, queue.Attempt{At: t0.Add(time.Hour), OK: true, Reply: "250 ok"})
			r.State, r.Finished, r.Data = queue.Done, t0.Add(time.Hour), nil
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		r, err := be.Get(ctx, id)
		if err != nil || r.State != queue.Done || r.Data != nil || len(r.Attempts) != 2 || r.Attempts[0].Reply != "421 busy" {
			t.Fatalf("after done: %+v %v", r, err)
		}
		if c, _, _ := be.Claim(ctx, t0.Add(48*time.Hour), 5, time.Second); !equal(claimIDs(c), []uint64{other}) {
			t.Fatalf("claimed %v: a done record must never be claimed", claimIDs(c))
		}
		s, err := be.Stats(ctx, t0.Add(-time.Hour))
		if err != nil || s != (queue.Counts{Pending: 1, Done: 1, FailedAttempts: 1}) {
			t.Fatalf("Stats = %+v %v", s, err)
		}
		if s, _ := be.Stats(ctx, t0.Add(time.Minute)); s.FailedAttempts != 0 {
			t.Fatalf("failed attempts since after the failure: %d", s.FailedAttempts)
		}
		boom := errors.New("no")
		if err := update(t, be, id, func(r *queue.Record) error { r.State = queue.Failed; return boom }); !errors.Is(err, boom) {
			t.Fatalf("Update's fn error = %v", err)
		}
		if r, _ := be.Get(ctx, id); r.State != queue.Done {
			t.Fatalf("an aborted Update changed the record: %s", r.State)
		}
		if err := update(t, be, 999, func(*queue.Record) error { return nil }); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("Update(999) = %v", err)
		}
	})

	t.Run("ListPagesThroughStateIndexNewestFirst", func(t *testing.T) {
		be, _ := newBackend(t)
		var all []uint64
		for i := range 7 {
			id := enqueue(t, be, &queue.Record{NextAttempt: t0})
			all = append([]uint64{id}, all...)
			if i%2 == 1 {
				if err := update(t, be, id, func(r *queue.Record) error { r.State = queue.Failed; return nil }); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, err := be.List(ctx, queue.Page{Limit: 3})
		if err != nil || !equal(ids(got), all[:3]) {
			t.Fatalf("List(3) = %v %v, want %v", ids(got), err, all[:3])
		}
		got, _ = be.List(ctx, queue.Page{Limit: 3, Before: got[2].ID})
		if !equal(ids(got), all[3:6]) {
			t.Fatalf("second page %v, want %v", ids(got), all[3:6])
		}
		pend, _ := be.List(ctx, queue.Page{State: queue.Pending, Limit: 10})
		failed, _ := be.List(ctx, queue.Page{State: queue.Failed, Limit: 2})
		more, _ := be.List(ctx, queue.Page{State: queue.Failed, Limit: 2, Before: failed[len(failed)-1].ID})
		if len(pend) != 4 || len(failed) != 2 || len(more) != 1 || pend[0].State != queue.Pending || more[0].State != queue.Failed {
			t.Fatalf("by state: pending %v failed %v then %v", ids(pend), ids(failed), ids(more))
		}
		if pend[0].Data != nil {
			t.Fatal("List returned payloads")
		}
	})

	t.Run("DeleteRemovesEverything", func(t *testing.T) {
		be, _ := newBackend(t)
		id := enqueue(t, be, &queue.Record{NextAttempt: t0, Data: []byte("x")})
		if err := update(t, be, id, func(r *queue.Record) error {
			r.Attempts = append(r.Attempts, queue.Attempt{At: t0, Reply: "550 no"})
			r.State = queue.Failed
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		var gone *queue.Record
		err := be.Write(ctx, func(tx queue.Tx) (err error) { gone, err = be.Delete(tx, id); return err })
		if err != nil || gone.ID != id || gone.State != queue.Failed {
			t.Fatalf("Delete = %+v %v", gone, err)
		}
		if _, err := be.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("Get after Delete = %v", err)
		}
		if s, _ := be.Stats(ctx, t0.Add(-time.Hour)); s != (queue.Counts{}) {
			t.Fatalf("Stats after Delete = %+v", s)
		}
		if l, _ := be.List(ctx, queue.Page{}); len(l) != 0 {
			t.Fatalf("List after Delete = %v", ids(l))
		}
		err = be.Write(ctx, func(tx queue.Tx) error { _, err := be.Delete(tx, id); return err })
		if !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("second Delete = %v", err)
		}
	})

	t.Run("OldestFinishedPruneFailures", func(t *testing.T) {
		be, _ := newBackend(t)
		old := enqueue(t, be, &queue.Record{NextAttempt: t0, Created: t0.Add(-72 * time.Hour), RetryFrom: t0.Add(-72 * time.Hour)})
		pend := enqueue(t, be, &queue.Record{NextAttempt: t0, Created: t0.Add(-50 * time.Hour), RetryFrom: t0.Add(-50 * time.Hour)})
		recent := enqueue(t, be, &queue.Record{NextAttempt: t0})
		for _, id := range []uint64{old, recent} {
			if err := update(t, be, id, func(r *queue.Record) error {
				r.Attempts = append(r.Attempts, queue.Attempt{At: r.Created, Reply: "550"})
				r.State = queue.Failed
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := be.Oldest(ctx, queue.Pending); err != nil || r == nil || r.ID != pend {
			t.Fatalf("Oldest pending = %+v %v", r, err)
		}
		if r, _ := be.Oldest(ctx, queue.Cancelled); r != nil {
			t.Fatalf("Oldest cancelled = %+v", r)
		}
		got, err := be.Finished(ctx, t0.Add(-24*time.Hour), 10)
		if err != nil || !equal(got, []uint64{old}) {
			t.Fatalf("Finished = %v %v, want [%d]", got, err, old)
		}
		if err := be.PruneFailures(ctx, t0.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		if s, _ := be.Stats(ctx, t0.Add(-100*time.Hour)); s.FailedAttempts != 1 || s.Failed != 2 || s.Pending != 1 {
			t.Fatalf("after PruneFailures: %+v", s)
		}
	})

	t.Run("ReopenKeepsRecordsAndDueOrder", func(t *testing.T) {
		be, reopen := newBackend(t)
		a := enqueue(t, be, &queue.Record{NextAttempt: t0.Add(time.Second), Data: []byte("a")})
		b := enqueue(t, be, &queue.Record{NextAttempt: t0})
		be = reopen()
		c, _, err := be.Claim(ctx, t0.Add(time.Minute), 5, time.Hour)
		if err != nil || !equal(claimIDs(c), []uint64{b, a}) || string(c[1].Record.Data) != "a" {
			t.Fatalf("after reopening: %v %v", claimIDs(c), err)
		}
		if s, _ := be.Stats(ctx, t0); s.Pending != 2 {
			t.Fatalf("counts after reopening: %+v", s)
		}
	})

	t.Run("ScanPagesInIDOrderWithPayloads", func(t *testing.T) {
		be, _ := newBackend(t)
		var want []uint64
		for i := range 5 {
			want = append(want, enqueue(t, be, &queue.Record{NextAttempt: t0, Data: []byte{byte('a' + i)}}))
		}
		var got []uint64
		var after uint64
		for {
			page, err := be.Scan(ctx, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			if len(page) > 2 {
				t.Fatalf("Scan returned %d records, limit 2", len(page))
			}
			for _, r := range page {
				if string(r.Data) != string([]byte{byte('a' + len(got))}) {
					t.Fatalf("record %d payload %q", r.ID, r.Data)
				}
				got = append(got, r.ID)
			}
			after = page[len(page)-1].ID
		}
		if !equal(got, want) {
			t.Fatalf("Scan = %v, want %v", got, want)
		}
	})

	t.Run("ImportKeepsEverythingAndLaterEnqueuesGoHigher", func(t *testing.T) {
		be, _ := newBackend(t)
		done := t0.Add(time.Minute)
		in := []queue.Record{
			{ID: 7, Kind: "k", State: queue.Done, Created: t0, NextAttempt: t0, RetryFrom: t0, Finished: done,
				Attempts: []queue.Attempt{{At: t0, Temporary: true, Reply: "451"}, {At: done, OK: true, Reply: "250"}},
				Meta:     []byte(`{"to":"x"}`)},
			{ID: 40, State: queue.Pending, Created: t0, NextAttempt: t0, RetryFrom: t0, RetryBase: 2,
				LastError: "451", Attempts: []queue.Attempt{{At: t0, Temporary: true, Reply: "451"}}, Data: []byte("body")},
		}
		if err := be.Write(ctx, func(tx queue.Tx) error {
			for i := range in {
				r := in[i]
				if err := be.Import(tx, &r); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := be.Write(ctx, func(tx queue.Tx) error { r := in[0]; return be.Import(tx, &r) }); err == nil {
			t.Fatal("Import of an existing ID succeeded")
		}
		for _, w := range in {
			r, err := be.Get(ctx, w.ID)
			if err != nil {
				t.Fatal(err)
			}
			if r.State != w.State || r.Kind != w.Kind || r.RetryBase != w.RetryBase || r.LastError != w.LastError ||
				!r.Finished.Equal(w.Finished) || len(r.Attempts) != len(w.Attempts) || string(r.Meta) != string(w.Meta) ||
				string(r.Data) != string(w.Data) {
				t.Fatalf("imported %+v, read back %+v", w, r)
			}
		}
		s, err := be.Stats(ctx, t0.Add(-time.Hour))
		if err != nil || s.Done != 1 || s.Pending != 1 || s.FailedAttempts != 2 {
			t.Fatalf("counts after import: %+v %v", s, err)
		}
		c, _, err := be.Claim(ctx, t0, 5, time.Hour)
		if err != nil || !equal(claimIDs(c), []uint64{40}) {
			t.Fatalf("claim after import: %v %v", claimIDs(c), err)
		}
		if id := enqueue(t, be, &queue.Record{NextAttempt: t0}); id <= 40 {
			t.Fatalf("enqueue after import got id %d, want above 40", id)
		}
	})

	t.Run("SumFollowsContent", func(t *testing.T) {
		be, _ := newBackend(t)
		empty, err := queue.Sum(ctx, be)
		if err != nil || empty.Count != 0 {
			t.Fatalf("Sum of nothing: %+v %v", empty, err)
		}
		id := enqueue(t, be, &queue.Record{NextAttempt: t0, Data: []byte("x")})
		one, err := queue.Sum(ctx, be)
		if err != nil || one.Count != 1 || one.Sum == empty.Sum {
			t.Fatalf("Sum of one: %+v %v", one, err)
		}
		if err := update(t, be, id, func(r *queue.Record) error { r.LastError = "changed"; return nil }); err != nil {
			t.Fatal(err)
		}
		if changed, _ := queue.Sum(ctx, be); changed.Count != 1 || changed.Sum == one.Sum {
			t.Fatalf("Sum did not follow a change: %+v", changed)
		}
	})
}
