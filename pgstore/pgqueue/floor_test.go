package pgqueue_test

import (
	"slices"
	"testing"
	"time"
)

// TestClaimsBetweenReapsStartAtTheFloor: a claim that reaps reads the floor
// (the earliest next attempt of the pending records); the claims after it,
// until the next one that reaps, look only from the floor (less a second)
// on, so they do not walk the dead index entries of the records attempted
// before. A record enqueued below the floor (by a replica whose clock is an
// hour behind) is left to the next claim that reaps. A record pending when
// the floor was read is never below it: one whose lease ended is claimed by
// the next claim, reaping or not.
func TestClaimsBetweenReapsStartAtTheFloor(t *testing.T) {
	ctx := testCtx(t)
	_, a := replica(t, migrated(t), "q")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	first := enqueueN(t, a, 2, t0)
	const lease = time.Minute
	claim := func(now time.Time) []uint64 {
		t.Helper()
		c, _, err := a.Claim(ctx, now, 10, lease)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, x := range c {
			ids = append(ids, x.ID)
		}
		slices.Sort(ids)
		return ids
	}

	// The first claim reaps and reads the floor: t0.
	if got := claim(t0); !slices.Equal(got, first) {
		t.Fatalf("first claim: %v, want %v", got, first)
	}
	a.HoldReaps()
	behind := enqueueN(t, a, 1, t0.Add(-time.Hour))
	if got := claim(t0); got != nil {
		t.Fatalf("a claim between reaps took %v: it looks from the floor on", got)
	}
	// The leases end: the records were pending when the floor was read.
	if got := claim(t0.Add(lease)); !slices.Equal(got, first) {
		t.Fatalf("after the leases ended a claim between reaps took %v, want %v", got, first)
	}
	a.ReapNext()
	if got := claim(t0.Add(lease)); !slices.Equal(got, behind) {
		t.Fatalf("the next claim that reaps took %v, want %v", got, behind)
	}
}
