package admin

import (
	"fmt"
	"testing"
	"time"
)

// The limiter's tables never grow past their capacity, and a full table
// never drops an active lock: new keys share the overflow budget instead,
// until buckets are full again and can be forgotten.
func TestLoginLimiterBoundedKeepsLocks(t *testing.T) {
	const max = 1000
	l := newLoginLimiterCap(max)
	now := time.Unix(1_800_000_000, 0)
	for i := 0; i < pairBurst; i++ {
		if !l.allow("root", "192.0.2.1", now) {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if l.allow("root", "192.0.2.1", now) {
		t.Fatal("6th attempt allowed")
	}
	// 3000 other clients, one attempt each: every one of them is active.
	for i := 0; i < 3*max; i++ {
		l.allow(fmt.Sprintf("name%d", i), fmt.Sprintf("10.0.%d.%d", i/256, i%256), now.Add(time.Duration(i)*time.Millisecond))
		if len(l.pairs.m) > max || len(l.client.m) > max {
			t.Fatalf("tables grew to %d and %d entries, capacity %d", len(l.pairs.m), len(l.client.m), max)
		}
	}
	now = now.Add(3 * time.Second)
	if l.allow("root", "192.0.2.1", now) {
		t.Fatal("the lock was dropped while the table was full")
	}
	if n := l.takeFull(); n == 0 {
		t.Fatal("attempts that met a full table were not counted")
	}
	// Clients not in the table share one budget: a burst, then refusals.
	refused := 0
	for i := 0; i < 50; i++ {
		if !l.allow("x", fmt.Sprintf("10.9.0.%d", i), now) {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("clients beyond the capacity are not limited")
	}
	// Once the others' buckets are full again they are forgotten, and new
	// clients get their own; the lock has refilled too, after 150 s.
	now = now.Add(pairBurst * pairEvery)
	if !l.allow("someone", "10.8.0.1", now) {
		t.Fatal("a new client is refused after the table emptied")
	}
	if len(l.pairs.m) > 2 {
		t.Fatalf("%d idle buckets kept", len(l.pairs.m))
	}
}

// IPv6 clients are limited per /64; IPv4-mapped addresses as IPv4.
func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"::ffff:192.0.2.1":     "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"not an address":       "not an address",
	} {
		if got := clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
