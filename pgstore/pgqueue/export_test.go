package pgqueue

import "time"

// ReapEvery is reapEvery, for the tests of package pgqueue_test.
const ReapEvery = reapEvery

// ReapNext makes b's next Claim one that reaps (and reads the floor), as
// when reapEvery has passed.
func (b *Backend) ReapNext() {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	b.lastReap = time.Time{}
}

// HoldReaps makes b's Claims not reap (nor read the floor) until ReapNext.
func (b *Backend) HoldReaps() {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	b.lastReap = time.Now().Add(24 * time.Hour)
}

// FloorQuery, ClaimQuery and NextQuery are the claim's statements, and
// DeadOwnersQuery the reap's search, for the plan tests.
const (
	FloorQuery = floorQuery
	ClaimQuery = claimQuery
	NextQuery  = nextQuery
)

var DeadOwnersQuery = deadOwnersQuery
