package identity

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// The in-memory index answers exactly as a plain map under random puts,
// replacements and deletions: growth, the backward shift of deletion
// (which must not cut a later entry off its probe run) and the compaction
// of the mxid arena keep every entry.
func TestLookupIndexMatchesMap(t *testing.T) {
	x := &lookupIndex{built: true, pepper: "p"}
	want := map[[32]byte]string{}
	var keys [][32]byte
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 60000; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint(i % 9000)))
		// Force long probe runs: many hashes share a home slot, at the
		// start of the table and at its end (runs that wrap around).
		switch i % 3 {
		case 0:
			h[0], h[1], h[2], h[3], h[4], h[5], h[6] = 0, 0, 0, 0, 0, 0, 0
		case 1:
			h[0], h[1], h[2], h[3], h[4], h[5], h[6] = 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
		}
		switch r.IntN(3) {
		case 0, 1:
			m := fmt.Sprintf("@u%d-%d:hs.test", i%9000, r.IntN(4))
			x.putLocked(h[:], []byte(m))
			if _, ok := want[h]; !ok {
				keys = append(keys, h)
			}
			want[h] = m
		case 2:
			x.deleteLocked(h[:])
			delete(want, h)
		}
		if i%5000 == 0 || i == 59999 {
			get, done := x.reader("p")
			for _, k := range keys {
				got, ok := get(k[:]), false
				var m string
				m, ok = want[k]
				if (got != nil) != ok || string(got) != m {
					done()
					t.Fatalf("step %d: %x: index %q, map %q (%v)", i, k[:4], got, m, ok)
				}
			}
			done()
			if x.n != len(want) {
				t.Fatalf("step %d: n = %d, map holds %d", i, x.n, len(want))
			}
		}
	}
	if x.garbage > len(x.arena)-x.garbage && x.garbage >= 1<<20 {
		t.Errorf("arena not compacted: %d of %d bytes garbage", x.garbage, len(x.arena))
	}
	if get, done := x.reader("other pepper"); get != nil {
		done()
		t.Error("an index built for one pepper answers for another")
	}
}

// The arena is compacted under churn: replacing the same mxids again and
// again does not grow it without bound.
func TestLookupIndexChurnIsBounded(t *testing.T) {
	x := &lookupIndex{built: true}
	for round := 0; round < 200; round++ {
		for i := 0; i < 1000; i++ {
			h := sha256.Sum256([]byte(fmt.Sprint(i)))
			x.putLocked(h[:], []byte(fmt.Sprintf("@user-with-a-long-name-%d-%d:hs.test", i, round)))
		}
	}
	if len(x.arena) > 4<<20 {
		t.Errorf("arena %d bytes for 1,000 live mxids", len(x.arena))
	}
}

// TestLookupIndexMemory measures the heap the index takes at a million
// bindings (mxids of 25-27 bytes); the goal is a server heap under 150 MB.
func TestLookupIndexMemory(t *testing.T) {
	const n = 1000000
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	x := &lookupIndex{built: true, slots: make([]lookupSlot, 1<<21), arena: make([]byte, 0, n*24)}
	for i := 0; i < n; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		x.putLocked(h[:], []byte(fmt.Sprintf("@user%d:populate.test", i)))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	mb := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	t.Logf("lookup index: %.1f MB of heap for %d bindings (%d slots, %d arena bytes)", mb, x.n, len(x.slots), len(x.arena))
	if mb > 80 {
		t.Errorf("lookup index takes %.1f MB at a million bindings", mb)
	}
	runtime.KeepAlive(x)
}
