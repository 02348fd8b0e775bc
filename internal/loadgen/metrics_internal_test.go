package loadgen

import (
	"testing"
	"time"
)

// TestParseCPUSeconds: the server CPU figure comes from the process
// collector's line, not from a metric whose name merely starts the same.
func TestParseCPUSeconds(t *testing.T) {
	raw := []byte("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n" +
		"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total_other 9\nprocess_cpu_seconds_total 12.5\n")
	if got := parseCPUSeconds(raw); got != 12500*time.Millisecond {
		t.Errorf("got %v, want 12.5s", got)
	}
	if got := parseCPUSeconds([]byte("go_goroutines 3\n")); got != -1 {
		t.Errorf("without the metric: got %v, want -1", got)
	}
}
