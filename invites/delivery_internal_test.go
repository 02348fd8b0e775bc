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

func TestShortCutsOnRuneBoundary(t *testing.T) {
	s := strings.Repeat("é", 400)
	got := short(s)
	if !strings.HasSuffix(got, "…") || len(got) > 304 || !strings.HasPrefix(s, strings.TrimSuffix(got, "…")) {
		t.Fatalf("short: %q", got)
	}
}
