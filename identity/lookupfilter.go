package identity

import (
	"bytes"
	"encoding/binary"
	"sync"

	"github.com/herald-im/herald/store"
)

// lookupIndex answers hashed lookups from memory on bbolt (boltStorage; it
// reads the bbolt buckets directly, so it is bbolt-only by nature: on
// PostgreSQL every replica would have to hear of every other's binds before
// they answer, and a lookup queries the shared index instead): for the current pepper, it
// maps every hash of the index bucket to its mxid, so a lookup costs a hash
// probe per address instead of a bbolt seek (a B+tree descent with a cache
// miss at every level: most of a lookup's time at a million bindings).
//
// A slot keeps the first 12 bytes of the hash: 96 bits, so two bound
// hashes do not share them in practice (about 1 chance in 10^16 at a
// million bindings), and a client cannot make a hash that matches a bound
// one without knowing that one already. The mxid is a length-prefixed span
// of one shared byte arena. Memory: 16 bytes a slot, at most half the slots
// used (so 16-32 bytes a binding) plus the mxids' bytes, about 60 MB at a
// million bindings with 25-byte mxids (measured by TestLookupIndexMemory).
//
// It holds exactly the index of the committed database: PutBinding and
// DeleteBinding register a commit hook (sync) that reads the hash's entry
// back from the database, one hook at a time, so hooks of transactions
// committed close together, which bbolt may run in any order, leave what the
// last commit left. A pepper rotation or a bulk import drops the whole
// index; the next lookup builds it again from one read transaction, and
// lookups seek the database until it is built. A hash changed while a build
// runs is read back once the build is installed.
type lookupIndex struct {
	syncMu  sync.Mutex // serialises commit hooks and the end of a build
	mu      sync.RWMutex
	pepper  string // the pepper the slots were built for
	slots   []lookupSlot
	n       int    // slots used
	arena   []byte // mxids, back to back
	garbage int    // arena bytes no slot points to
	built   bool

	building bool
	touched  [][32]byte // hashes changed while a build runs
}

type lookupSlot struct {
	h0  uint64 // the hash's first 12 bytes
	h1  uint32
	off uint32 // the mxid's uvarint length and bytes in arena; 0: empty slot
}

func splitHash(h []byte) (uint64, uint32) {
	return binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint32(h[8:12])
}

// at returns the mxid at off and the bytes it takes in the arena.
func (x *lookupIndex) at(off uint32) (mxid []byte, size int) {
	n, k := binary.Uvarint(x.arena[off:])
	return x.arena[int(off)+k : int(off)+k+int(n)], k + int(n)
}

// appendLocked adds mxid to the arena (whose byte 0 is never an entry, so
// that offset 0 can mark an empty slot) and returns its offset.
func (x *lookupIndex) appendLocked(mxid []byte) uint32 {
	if len(x.arena) == 0 {
		x.arena = append(x.arena, 0)
	}
	off := uint32(len(x.arena))
	x.arena = binary.AppendUvarint(x.arena, uint64(len(mxid)))
	x.arena = append(x.arena, mxid...)
	return off
}

// findLocked returns the slot of h, or of the empty slot where it would go.
func (x *lookupIndex) findLocked(h0 uint64, h1 uint32) int {
	mask := uint64(len(x.slots) - 1)
	for i := h0 & mask; ; i = (i + 1) & mask {
		s := &x.slots[i]
		if s.off == 0 || (s.h0 == h0 && s.h1 == h1) {
			return int(i)
		}
	}
}

// putLocked maps h to mxid, replacing what it mapped to.
func (x *lookupIndex) putLocked(h []byte, mxid []byte) {
	if len(mxid) == 0 {
		return
	}
	if (x.n+1)*2 > len(x.slots) {
		x.growLocked(max(len(x.slots)*2, 1024))
	}
	h0, h1 := splitHash(h)
	i := x.findLocked(h0, h1)
	s := &x.slots[i]
	if s.off != 0 {
		old, size := x.at(s.off)
		if bytes.Equal(old, mxid) {
			return
		}
		x.garbage += size
	} else {
		x.n++
	}
	*s = lookupSlot{h0: h0, h1: h1, off: x.appendLocked(mxid)}
	x.compactIfWastefulLocked()
}

// deleteLocked removes h, shifting back the slots of its probe run so that
// no later entry is cut off from its home slot (linear probing needs no
// tombstones that way).
func (x *lookupIndex) deleteLocked(h []byte) {
	if len(x.slots) == 0 {
		return
	}
	h0, h1 := splitHash(h)
	i := x.findLocked(h0, h1)
	if x.slots[i].off == 0 {
		return
	}
	_, size := x.at(x.slots[i].off)
	x.garbage += size
	x.n--
	mask := len(x.slots) - 1
	for j := (i + 1) & mask; x.slots[j].off != 0; j = (j + 1) & mask {
		home := int(x.slots[j].h0 & uint64(mask))
		// j's entry may move to i unless its home lies cyclically in (i, j].
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			x.slots[i] = x.slots[j]
			i = j
		}
	}
	x.slots[i] = lookupSlot{}
	x.compactIfWastefulLocked()
}

func (x *lookupIndex) growLocked(size int) {
	old := x.slots
	x.slots = make([]lookupSlot, size)
	mask := uint64(size - 1)
	for _, s := range old {
		if s.off == 0 {
			continue
		}
		i := s.h0 & mask
		for x.slots[i].off != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = s
	}
}

// compactIfWastefulLocked copies the live mxids to a new arena when replaced
// and deleted ones take more room than the live ones (and over 1 MB), so
// churn cannot grow the arena without bound.
func (x *lookupIndex) compactIfWastefulLocked() {
	if x.garbage < 1<<20 || x.garbage < len(x.arena)-x.garbage {
		return
	}
	arena := make([]byte, 1, len(x.arena)-x.garbage)
	for i := range x.slots {
		s := &x.slots[i]
		if s.off == 0 {
			continue
		}
		_, size := x.at(s.off)
		off := uint32(len(arena))
		arena = append(arena, x.arena[s.off:int(s.off)+size]...)
		s.off = off
	}
	x.arena, x.garbage = arena, 0
}

// dropLocked forgets everything (the pepper changed, or bulk writes).
func (x *lookupIndex) dropLocked() {
	x.slots, x.n, x.arena, x.garbage, x.pepper, x.built = nil, 0, nil, 0, "", false
}

func (x *lookupIndex) drop() {
	x.mu.Lock()
	x.dropLocked()
	x.mu.Unlock()
}

// sync makes the entry of hash h what the committed database holds. It runs
// in the commit hook of every transaction that changed h.
func (x *lookupIndex) sync(db *store.DB, h [32]byte) {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.Lock()
	if x.building {
		x.touched = append(x.touched, h)
	}
	built := x.built
	x.mu.Unlock()
	if built {
		x.readBack(db, [][32]byte{h}, nil)
	}
}

// readBack reads the entries of hs from the database and writes them into
// the index (after installing fresh, if not nil), or drops the index when
// the pepper is no longer the one it was built for or the database cannot
// be read (the next lookup builds it again). The caller holds syncMu: the
// reads and writes of concurrent commit hooks happen one after the other,
// so the last one writes the newest state. The database is read without mu:
// a lookup holds a read transaction while it waits for mu, and a commit
// that grows the file waits for every read transaction to end before the
// read here could start.
func (x *lookupIndex) readBack(db *store.DB, hs [][32]byte, fresh *lookupIndex) {
	type entry struct {
		h    [32]byte
		mxid []byte // nil: not bound
	}
	var pepper string
	entries := make([]entry, 0, len(hs))
	err := db.View(func(tx *store.Tx) error {
		pepper = string(tx.Bolt.Bucket(lookupMetaBucket).Get([]byte("pepper")))
		b := tx.Bolt.Bucket(lookupHashBucket)
		for _, h := range hs {
			var mxid []byte
			if v := b.Get(h[:]); v != nil {
				mxid = append([]byte(nil), v...)
			}
			entries = append(entries, entry{h, mxid})
		}
		return nil
	})
	x.mu.Lock()
	defer x.mu.Unlock()
	if fresh != nil {
		x.slots, x.n, x.arena, x.garbage, x.pepper, x.built = fresh.slots, fresh.n, fresh.arena, fresh.garbage, fresh.pepper, true
	}
	if !x.built {
		return
	}
	if err != nil || pepper != x.pepper {
		x.dropLocked()
		return
	}
	for _, e := range entries {
		if e.mxid != nil {
			x.putLocked(e.h[:], e.mxid)
		} else {
			x.deleteLocked(e.h[:])
		}
	}
}

// reader returns, for hashes under pepper, a function giving a hash's mxid
// (nil when it is not bound), or nil when the index cannot answer for pepper
// (not built, or built for another pepper): then every hash must be sought.
// The caller must call done when it stops using the function, and copy the
// mxid before.
func (x *lookupIndex) reader(pepper string) (get func(h []byte) []byte, done func()) {
	x.mu.RLock()
	if !x.built || x.pepper != pepper {
		x.mu.RUnlock()
		return nil, func() {}
	}
	return func(h []byte) []byte {
		s := &x.slots[x.findLocked(splitHash(h))]
		if s.off == 0 {
			return nil
		}
		mxid, _ := x.at(s.off)
		return mxid
	}, x.mu.RUnlock
}

// build fills the index from the database in one read transaction (call it
// outside any transaction), unless a build runs already.
func (x *lookupIndex) build(db *store.DB) error {
	x.mu.Lock()
	if x.building {
		x.mu.Unlock()
		return nil
	}
	x.building, x.touched = true, nil
	x.mu.Unlock()
	var fresh lookupIndex
	err := db.View(func(tx *store.Tx) error {
		p := tx.Bolt.Bucket(lookupMetaBucket).Get([]byte("pepper"))
		if p == nil {
			return nil
		}
		fresh.pepper = string(p)
		b := tx.Bolt.Bucket(lookupHashBucket)
		size := 1024
		keys := b.Stats().KeyN
		for size < keys*2+2 {
			size *= 2
		}
		fresh.slots = make([]lookupSlot, size)
		fresh.arena = make([]byte, 0, min(keys, 1024)*32)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 32 {
				continue
			}
			// Size the arena once from the mxids seen so far instead of
			// letting append double it: doubling leaves up to half of it
			// unused, tens of MB at a million bindings, plus the copies.
			if len(fresh.arena)+len(v) > cap(fresh.arena) && fresh.n > 0 {
				want := len(fresh.arena) / fresh.n * keys * 21 / 20
				if want < len(fresh.arena)+len(v) {
					want = (len(fresh.arena) + len(v)) * 5 / 4
				}
				fresh.arena = append(make([]byte, 0, want), fresh.arena...)
			}
			fresh.putLocked(k, v)
		}
		return nil
	})
	// Hooks wait from here until the build is installed; those that ran
	// during the scan left their hashes in touched.
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.Lock()
	x.building = false
	touched := x.touched
	x.touched = nil
	x.mu.Unlock()
	if err != nil || fresh.pepper == "" {
		return err
	}
	// Install it, with the hashes committed after the build's snapshot read
	// back from the database as it is now.
	x.readBack(db, touched, &fresh)
	return nil
}
