package invites

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"0", 0}, {"7", 7 * time.Second}, {" 120 ", 2 * time.Minute}, {"-3", 0}, {"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	} {
		if got := parseRetryAfter(c.in, now); got != c.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestBackoffIsCappedExponential(t *testing.T) {
	d := &Deliveries{opts: DeliveryOptions{MinBackoff: time.Second, MaxBackoff: 10 * time.Second}}
	want := []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for n, w := range want {
		if got := d.backoff(n); got != w {
			t.Errorf("backoff(%d) = %v, want %v", n, got, w)
		}
	}
	if got := d.backoff(5000); got != 10*time.Second {
		t.Errorf("backoff(5000) = %v", got)
	}
}

func TestShortCutsOnRuneBoundary(t *testing.T) {
	s := strings.Repeat("é", 400)
	got := short(s)
	if !strings.HasSuffix(got, "…") || len(got) > 304 || !strings.HasPrefix(s, strings.TrimSuffix(got, "…")) {
		t.Fatalf("short: %q", got)
	}
}
