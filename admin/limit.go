package admin

import (
	"crypto/sha256"
	"net"
	"strings"
	"sync"
	"time"
)

// Login attempts are limited per (client, username) and per client, never per
// username alone: a per-username limit lets anyone lock the real admin out
// with a few wrong passwords. Both tables are bounded and only ever drop a
// bucket that is full again, which is the same as a fresh one; an active
// lock is never forgotten, however many names or clients an attacker sprays.
const (
	pairBurst   = 5                // quick tries per (client, username) ...
	pairEvery   = 30 * time.Second // ... then one per 30 s
	clientBurst = 20               // quick tries per client, any names ...
	clientEvery = 5 * time.Second  // ... then one per 5 s

	// limiterCapacity is the most buckets each table holds (about 100 bytes
	// each). A bucket stays active at most pairBurst*pairEvery (150 s) after
	// its last use, so filling a table takes more than 300 distinct clients
	// a second.
	limiterCapacity = 50000
)

// bucket is a token bucket: tokens as of at.
type bucket struct {
	tokens float64
	at     time.Time
}

type bucketTable struct {
	burst float64
	every time.Duration
	max   int
	m     map[[16]byte]*bucket
	// overflow is shared by every key that finds the table full of active
	// buckets: new clients are slowed down together, known locks stay.
	overflow  bucket
	lastSweep time.Time
}

func newBucketTable(burst int, every time.Duration, max int) *bucketTable {
	return &bucketTable{burst: float64(burst), every: every, max: max, m: map[[16]byte]*bucket{}}
}

// level is b's tokens at now (a zero bucket is full).
func (t *bucketTable) level(b *bucket, now time.Time) float64 {
	if b.at.IsZero() {
		return t.burst
	}
	l := b.tokens + float64(now.Sub(b.at))/float64(t.every)
	if l > t.burst {
		l = t.burst
	}
	return l
}

// get returns key's bucket, making one if there is room; with the table
// full of active buckets it returns the shared overflow bucket.
func (t *bucketTable) get(key [16]byte, now time.Time) (b *bucket, overflow bool) {
	if b, ok := t.m[key]; ok {
		return b, false
	}
	if len(t.m) >= t.max && now.Sub(t.lastSweep) >= time.Second {
		t.sweep(now)
	}
	if len(t.m) >= t.max {
		return &t.overflow, true
	}
	b = &bucket{}
	t.m[key] = b
	return b, false
}

// sweep drops the buckets that are full again: forgetting them changes
// nothing. It runs at most once a second, and only when the table is full.
func (t *bucketTable) sweep(now time.Time) {
	t.lastSweep = now
	for k, b := range t.m {
		if t.level(b, now) >= t.burst {
			delete(t.m, k)
		}
	}
}

func (t *bucketTable) take(b *bucket, now time.Time) {
	b.tokens, b.at = t.level(b, now)-1, now
}

// loginLimiter rate-limits console logins per (client, username) and per client.
type loginLimiter struct {
	mu     sync.Mutex
	pairs  *bucketTable
	client *bucketTable
	// full counts attempts that found a table full (for the log).
	full int
}

func newLoginLimiter() *loginLimiter {
	return newLoginLimiterCap(limiterCapacity)
}

func newLoginLimiterCap(max int) *loginLimiter {
	return &loginLimiter{
		pairs:  newBucketTable(pairBurst, pairEvery, max),
		client: newBucketTable(clientBurst, clientEvery, max),
	}
}

// allow takes one attempt from both buckets when both have one; false
// means refuse (and takes nothing).
func (l *loginLimiter) allow(user, client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	client = clientKey(client)
	p, pFull := l.pairs.get(limiterKey("p", client, strings.ToLower(user)), now)
	c, cFull := l.client.get(limiterKey("c", client, ""), now)
	if pFull || cFull {
		l.full++
	}
	if l.pairs.level(p, now) < 1 || l.client.level(c, now) < 1 {
		return false
	}
	l.pairs.take(p, now)
	l.client.take(c, now)
	return true
}

// succeeded forgets the (client, username) bucket after a right password.
func (l *loginLimiter) succeeded(user, client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pairs.m, limiterKey("p", clientKey(client), strings.ToLower(user)))
}

// takeFull returns and resets the count of attempts that met a full table.
func (l *loginLimiter) takeFull() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.full
	l.full = 0
	return n
}

// limiterKey is a fixed-size key, whatever the length of the name.
func limiterKey(kind, client, user string) [16]byte {
	s := sha256.Sum256([]byte(kind + "\x00" + client + "\x00" + user))
	var k [16]byte
	copy(k[:], s[:])
	return k
}

// clientKey is the unit a client is limited by: an IPv4 address, or an IPv6
// /64 (one subscriber's prefix: rotating addresses inside it is free).
func clientKey(ip string) string {
	a := net.ParseIP(ip)
	if a == nil {
		return ip
	}
	if v4 := a.To4(); v4 != nil {
		return v4.String()
	}
	return a.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
