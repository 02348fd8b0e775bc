package server

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// A sweep of the table runs once per period across replicas on PostgreSQL:
// two replicas (two pools on one database) both offer to run the job, and
// its runs never overlap and start at least a period apart.
func TestPeriodicJobRunsOncePerPeriodAcrossReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const period = time.Second
	var mu sync.Mutex
	var starts []time.Time
	running, overlapped := 0, false
	enough := make(chan struct{})
	job := periodicJob{name: "test-sweep", desc: "test sweep", period: period, run: func(ctx context.Context) error {
		mu.Lock()
		starts = append(starts, time.Now())
		running++
		overlapped = overlapped || running > 1
		if len(starts) == 4 {
			close(enough)
		}
		mu.Unlock()
		time.Sleep(50 * time.Millisecond) // a pass that takes a while, for overlaps to show
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}}
	jctx, stop := context.WithCancel(ctx)
	var apps []*App
	for range 2 {
		pg, err := pgstore.Open(ctx, pgstore.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		defer pg.Close()
		a := &App{db: store.NewPostgres(pg), log: slog.New(slog.DiscardHandler)}
		a.runPeriodic(jctx, []periodicJob{job})
		apps = append(apps, a)
	}
	select {
	case <-enough:
	case <-ctx.Done():
		t.Fatal("the job did not run 4 times within a minute")
	}
	stop()
	for _, a := range apps {
		a.bg.Wait()
	}
	mu.Lock()
	defer mu.Unlock()
	if overlapped {
		t.Fatal("two replicas ran the job at once")
	}
	for i := 1; i < len(starts); i++ {
		// periodic_jobs moves next_run a period on from the start, in
		// database time: the same clock as this machine's here.
		if gap := starts[i].Sub(starts[i-1]); gap < period-100*time.Millisecond {
			t.Fatalf("runs %d and %d started %v apart, period %v: %v", i-1, i, gap, period, starts)
		}
	}
}

// On PostgreSQL readiness is the database answering a ping, and the
// metrics name the replica and show its pool.
func TestPostgresReadinessAndReplicaMetrics(t *testing.T) {
	ctx := context.Background()
	pg, err := pgstore.Open(ctx, pgstore.Options{DSN: pgtest.DSN(t)})
	if err != nil {
		t.Fatal(err)
	}
	a := &App{db: store.NewPostgres(pg), log: slog.New(slog.DiscardHandler)}
	if r := a.pgReadiness(); r != nil {
		t.Fatalf("readiness with PostgreSQL up: %v", r)
	}
	ch := make(chan prometheus.Metric, 100)
	a.collectReplica(ch)
	close(ch)
	var names []string
	for m := range ch {
		names = append(names, m.Desc().String())
	}
	all := strings.Join(names, "\n")
	for _, want := range []string{"herald_replica_info", "herald_db_pool_connections", "herald_db_pool_acquires_total"} {
		if !strings.Contains(all, want) {
			t.Errorf("metrics lack %s:\n%s", want, all)
		}
	}
	if size, err := a.dbSize(); err != nil || size <= 0 {
		t.Errorf("database size %d %v", size, err)
	}
	pg.Close() // the database gone, as far as this replica can tell
	if r := a.pgReadiness(); len(r) != 1 || !strings.Contains(r[0], "PostgreSQL") {
		t.Fatalf("readiness with the pool closed: %v", r)
	}
}
