package identity

import (
	"encoding/binary"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// lookupFilter answers "is this hash possibly bound?" from memory, so a
// hashed lookup seeks the index (a B+tree descent with a cache miss at every
// level: most of a lookup's time at a million bindings) only for hashes that
// may be there. Most addresses a client asks about are not bound.
//
// It holds the first 8 bytes of every hash in the index for one pepper, in
// an open-addressing set: 16 bytes per binding. It may hold more than the
// index (an unbound address stays until the next build: a seek that finds
// nothing), never less: a binding committed after the snapshot it was built
// from is added by PutBinding's commit hook, even while a build runs. A
// pepper rotation drops it; the next lookup builds it again in the
// background, and lookups seek everything meanwhile.
type lookupFilter struct {
	mu       sync.RWMutex
	pepper   string   // the pepper set was built for
	set      []uint64 // open addressing, 0 empty; nil: not built
	n        int
	building bool
	adds     []pepperPrefix // added while a build runs
}

type pepperPrefix struct {
	pepper string
	prefix uint64
}

func hashPrefix(h []byte) uint64 {
	p := binary.BigEndian.Uint64(h[:8])
	if p == 0 {
		p = 1 // 0 marks an empty slot
	}
	return p
}

// insert adds p to set (which has room).
func insertPrefix(set []uint64, p uint64) bool {
	mask := uint64(len(set) - 1)
	for i := p & mask; ; i = (i + 1) & mask {
		switch set[i] {
		case p:
			return false
		case 0:
			set[i] = p
			return true
		}
	}
}

func (f *lookupFilter) addLocked(p uint64) {
	if (f.n+1)*2 > len(f.set) {
		grown := make([]uint64, max(len(f.set)*2, 1024))
		for _, q := range f.set {
			if q != 0 {
				insertPrefix(grown, q)
			}
		}
		f.set = grown
	}
	if insertPrefix(f.set, p) {
		f.n++
	}
}

// added records a committed binding's hash under pepper.
func (f *lookupFilter) added(pepper string, h []byte) {
	p := hashPrefix(h)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.building {
		f.adds = append(f.adds, pepperPrefix{pepper, p})
	}
	if f.set != nil && f.pepper == pepper {
		f.addLocked(p)
	}
}

// drop forgets the set (the pepper changed).
func (f *lookupFilter) drop() {
	f.mu.Lock()
	f.set, f.n, f.pepper = nil, 0, ""
	f.mu.Unlock()
}

// mayHold reports, for hashes under pepper, a function telling whether a
// hash may be bound, or nil when the filter cannot answer for pepper (not
// built, or built for another pepper): then every hash must be sought. The
// caller must call done when it stops using the function.
func (f *lookupFilter) mayHold(pepper string) (may func(h []byte) bool, done func()) {
	f.mu.RLock()
	if f.set == nil || f.pepper != pepper {
		f.mu.RUnlock()
		return nil, func() {}
	}
	set := f.set
	mask := uint64(len(set) - 1)
	return func(h []byte) bool {
		p := hashPrefix(h)
		for i := p & mask; ; i = (i + 1) & mask {
			switch set[i] {
			case p:
				return true
			case 0:
				return false
			}
		}
	}, f.mu.RUnlock
}

// build fills the set from the index in one read transaction (call it
// outside any transaction), unless a build runs already.
func (f *lookupFilter) build(db *bolt.DB) error {
	f.mu.Lock()
	if f.building {
		f.mu.Unlock()
		return nil
	}
	f.building, f.adds = true, nil
	f.mu.Unlock()
	var pepper string
	var set []uint64
	n := 0
	err := db.View(func(tx *bolt.Tx) error {
		p := tx.Bucket(lookupMetaBucket).Get([]byte("pepper"))
		if p == nil {
			return nil
		}
		pepper = string(p)
		b := tx.Bucket(lookupHashBucket)
		size := 1024
		for size < b.Stats().KeyN*2+2 {
			size *= 2
		}
		set = make([]uint64, size)
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) >= 8 && insertPrefix(set, hashPrefix(k)) {
				n++
			}
		}
		return nil
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	f.building = false
	adds := f.adds
	f.adds = nil
	if err != nil || pepper == "" {
		return err
	}
	f.set, f.n, f.pepper = set, n, pepper
	for _, a := range adds {
		if a.pepper == pepper {
			f.addLocked(a.prefix)
		}
	}
	return nil
}
