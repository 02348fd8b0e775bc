package loadgen

import (
	"context"
	"testing"
	"time"
)

// pace hands out due times rate per second apart from start, the late ones
// at once (so the latency counted from them includes the wait), and closes
// its channel when the context ends.
func TestPaceHandsOutDueTimesAtTheRate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now().Add(-time.Second) // the first 2,000 are already due
	due := pace(ctx, start, 2000)
	for i := range 100 {
		at := <-due
		if want := start.Add(time.Duration(i) * 500 * time.Microsecond); !at.Equal(want) {
			t.Fatalf("due time %d: %v after start, want %v", i, at.Sub(start), want.Sub(start))
		}
	}
	cancel()
	for range due { // drains what was in flight, then the channel closes
	}
}
