package sydent_test

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/sydent"
)

// BenchmarkImport imports a generated sydent-shaped database with
// SYDENT_BENCH_BINDINGS bindings (default 1,000,000; plus one pending invite
// per 100 and one access token per 10) into a fresh data_dir per iteration:
//
//	go test ./sydent/ -run '^$' -bench Import -benchtime 1x -benchmem
//
// docs/benchmarks.md records the figure.
func BenchmarkImport(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("SYDENT_BENCH_BINDINGS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	g, err := sydentfixture.Generate(context.Background(), b.TempDir(), n)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %d bindings in %s", n, time.Since(start).Round(time.Millisecond))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data := b.TempDir()
		cpu0 := cpuTime()
		r, err := importInto(context.Background(), b, testConfig(b, data), g.DB, g.Config, sydent.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if r.Bindings.Imported != n || r.Invites.Imported != g.Invites {
			b.Fatalf("imported %d bindings, %d invites; want %d, %d", r.Bindings.Imported, r.Invites.Imported, n, g.Invites)
		}
		b.ReportMetric(float64(n)/r.Duration.Seconds(), "bindings/s")
		b.ReportMetric((cpuTime() - cpu0).Seconds(), "cpu-s")
	}
}

// cpuTime is the user and system CPU time the process used so far: on a
// shared machine, wall time says more about the neighbours than the import.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
