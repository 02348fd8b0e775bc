package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestTakeIsAllOrNothing(t *testing.T) {
	a, b := New(3600, 2, 0), New(3600, 1, 0)
	if _, wait := Take(t0, Key{a, "x"}, Key{b, "y"}); wait != 0 {
		t.Fatalf("first take waits %v", wait)
	}
	// b is empty now: nothing is taken from a either.
	if _, wait := Take(t0, Key{a, "x"}, Key{b, "y"}); wait <= 0 || wait > time.Second {
		t.Fatalf("second take: wait %v, want about 1s", wait)
	}
	if _, wait := Take(t0, Key{a, "x"}); wait != 0 {
		t.Fatalf("a lost a token to a refused take (wait %v)", wait)
	}
	// undo gives tokens back.
	undo, _ := Take(t0.Add(time.Second), Key{b, "y"})
	undo()
	if _, wait := Take(t0.Add(time.Second), Key{b, "y"}); wait != 0 {
		t.Fatalf("undo did not return the token (wait %v)", wait)
	}
	// nil sets and empty keys are unlimited.
	for range 100 {
		if _, wait := Take(t0, Key{nil, "x"}, Key{a, ""}); wait != 0 {
			t.Fatal("unlimited key limited")
		}
	}
}

// A flood of distinct keys cannot grow memory past the cap: new keys are
// refused (fail closed) until old ones have refilled and are forgotten.
func TestKeysAreCapped(t *testing.T) {
	s := New(60, 1, 100) // a key refills in a minute
	for i := range 1000 {
		Take(t0, Key{s, fmt.Sprint(i)})
	}
	if n := s.Len(); n > 100 {
		t.Fatalf("%d keys remembered, cap 100", n)
	}
	if _, wait := Take(t0, Key{s, "new"}); wait <= 0 {
		t.Fatal("a new key was admitted past the cap")
	}
	if _, wait := Take(t0.Add(2*time.Minute), Key{s, "new"}); wait != 0 {
		t.Fatalf("after every key refilled, a new key waits %v", wait)
	}
	if n := s.Len(); n != 1 {
		t.Fatalf("%d keys after the sweep, want 1", n)
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":          "203.0.113.7",
		"::ffff:203.0.113.7":   "203.0.113.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"not an ip":            "host:not an ip",
		"":                     "host:",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
