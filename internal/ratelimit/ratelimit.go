// Package ratelimit keeps one token bucket per key (an address, an account, a
// client network) in memory, with a hard cap on the number of keys so that
// requests from anyone cannot grow memory without bound.
package ratelimit

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxKeys caps the keys one Set remembers.
const DefaultMaxKeys = 100_000

// Set is a token bucket per key. A nil *Set allows everything.
type Set struct {
	limit rate.Limit
	burst int
	full  time.Duration // time for an empty bucket to refill
	max   int

	mu    sync.Mutex
	m     map[string]*entry
	sweep time.Time
}

type entry struct {
	lim  *rate.Limiter
	seen time.Time
}

// New returns a Set allowing perHour requests an hour per key, burst at once
// (at least 1); nil (unlimited) when perHour is 0 or less. maxKeys <= 0 means
// DefaultMaxKeys.
func New(perHour float64, burst, maxKeys int) *Set {
	if perHour <= 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	perSec := perHour / 3600
	return &Set{limit: rate.Limit(perSec), burst: burst, max: maxKeys,
		full: time.Duration(float64(burst) / perSec * float64(time.Second)), m: map[string]*entry{}}
}

// reserve takes a token for key at now. It returns the reservation (to give
// back) or how long to wait. When the Set is full of keys still refilling, a
// new key is refused for the time one token takes: failing closed keeps
// memory bounded under a flood of distinct keys.
func (s *Set) reserve(key string, now time.Time) (*rate.Reservation, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Sweep once a minute, or once a second while full: not on every
	// request, or a flood of new keys would cost a walk of the map each.
	if since := now.Sub(s.sweep); since > time.Minute || len(s.m) >= s.max && since > time.Second {
		for k, e := range s.m {
			if now.Sub(e.seen) > s.full {
				delete(s.m, k) // refilled completely: same as a fresh bucket
			}
		}
		s.sweep = now
	}
	e := s.m[key]
	if e == nil {
		if len(s.m) >= s.max {
			return nil, time.Duration(float64(time.Second) / float64(s.limit))
		}
		e = &entry{lim: rate.NewLimiter(s.limit, s.burst)}
		s.m[key] = e
	}
	e.seen = now
	r := e.lim.ReserveN(now, 1)
	if !r.OK() {
		return nil, s.full
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, d
	}
	return r, 0
}

// Len is the number of keys remembered (for tests).
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Key pairs a Set with the key to charge in it. An empty key or nil Set is
// skipped.
type Key struct {
	Set *Set
	Key string
}

// Take takes one token for every key, or none: when any is exhausted it
// returns the longest wait and gives back what it took. On success, undo
// gives the tokens back (for a request that failed after all).
func Take(now time.Time, keys ...Key) (undo func(), wait time.Duration) {
	var taken []*rate.Reservation
	for _, k := range keys {
		if k.Set == nil || k.Key == "" {
			continue
		}
		r, d := k.Set.reserve(k.Key, now)
		if d > wait {
			wait = d
		}
		if r != nil {
			taken = append(taken, r)
		}
	}
	undo = func() {
		for _, r := range taken {
			r.CancelAt(now)
		}
	}
	if wait > 0 {
		undo()
		return func() {}, wait
	}
	return undo, 0
}

// Millis rounds a wait up to whole milliseconds, for retry_after_ms.
func Millis(d time.Duration) int64 {
	return int64(math.Ceil(float64(d) / float64(time.Millisecond)))
}

// ClientKey is the key for a client address: the address itself for IPv4,
// its /64 network for IPv6 (one subscriber usually holds a whole /64, so
// per-address keys would let one client take 2^64 of them). A host that is
// not an IP address is its own key, so the limit still applies to it.
func ClientKey(host string) string {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "host:" + host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}
