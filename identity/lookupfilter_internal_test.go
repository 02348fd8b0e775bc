package identity

import (
	"crypto/sha256"
	"fmt"
	"testing"
)

// The set grows without losing a prefix, and a prefix committed while a
// build runs is kept by the build.
func TestLookupFilterSet(t *testing.T) {
	f := &lookupFilter{set: make([]uint64, 1024), pepper: "p"}
	var hs [][32]byte
	for i := 0; i < 20000; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		hs = append(hs, h)
		f.added("p", h[:])
	}
	f.added("other pepper", []byte("\x00\x00\x00\x00\x00\x00\x00\x07xxxxxxxxxxxxxxxxxxxxxxxx"))
	may, done := f.mayHold("p")
	for i, h := range hs {
		if !may(h[:]) {
			t.Fatalf("hash %d lost", i)
		}
	}
	misses := 0
	for i := 0; i < 20000; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint("no", i)))
		if may(h[:]) {
			misses++
		}
	}
	done()
	if misses > 0 || f.n != 20000 {
		t.Errorf("%d unbound hashes held; n = %d", misses, f.n)
	}
	if may, done := f.mayHold("other pepper"); may != nil {
		done()
		t.Error("a set built for one pepper answers for another")
	}

	// During a build, additions are kept aside and applied to the new set.
	g := &lookupFilter{building: true}
	g.added("p", hs[0][:])
	if len(g.adds) != 1 {
		t.Fatalf("adds during a build: %v", g.adds)
	}
}
