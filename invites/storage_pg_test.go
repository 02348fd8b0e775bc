package invites

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/store"
)

// populate stores n invites on s in transactions of 1,000: nine in ten
// finished (resolved, expired, revoked), the rest pending, as on a server
// that has run for a while.
func populate(t testing.TB, s *Service, clk *testClock, n int) {
	t.Helper()
	for done := 0; done < n; {
		batch := min(1000, n-done)
		if err := s.db.Update(func(tx *store.Tx) error {
			for i := range batch {
				k := done + i
				inv := testInvite(k, clk.Now())
				inv.Address = fmt.Sprintf("pop%d@example.org", k)
				inv.Created = clk.Now().Add(time.Duration(k) * time.Second)
				switch k % 10 {
				case 0:
				case 1, 2, 3, 4, 5:
					inv.State, inv.ResolvedMXID, inv.StateChanged = StateResolved, "@u:hs2.test", inv.Created
				case 6, 7, 8:
					inv.State, inv.StateChanged = StateExpired, inv.ExpiresAt
				default:
					inv.State, inv.StateChanged = StateRevoked, inv.Created
				}
				if err := s.InsertTx(tx, inv); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		done += batch
	}
	if err := s.FoldCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Every read of a hot path, sweep or console list can be answered from an
// index: with sequential scans priced out, no plan scans a table whole.
func TestPGQueriesUseIndexes(t *testing.T) {
	clk := newClock()
	db := storetest.OpenPostgres(t, pgtest.DSN(t))
	s := storageService(t, db, clk.Now)
	populate(t, s, clk, 3000)
	pool := db.PG().Pool()
	if _, err := pool.Exec(t.Context(), `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	queries := []struct {
		name string
		sql  string
		args []any
	}{
		{"get", qGet, []any{int64(5)}},
		{"byToken", qByToken, []any{"token"}},
		{"forAddress", qForAddress, []any{"email", "pop7@example.org"}},
		{"dedup", qDedup, []any{"@alice:hs1.test", "!room0:hs1.test", "email", "pop0@example.org"}},
		{"inState", qInState, []any{StateRevoked}},
		{"counters", qCounters, []any{[]string{"state:pending", "created:20000"}}},
		{"expiryDue", qExpiryDue, []any{now, int64(500)}},
		{"eraseDue", qEraseDue, []any{now, now.Add(-time.Hour), int64(0), int64(500)}},
		{"pending", qPending, []any{int64(1 << 62), int64(256)}},
		{"optedOut", qOptedOut, []any{"pop1@example.org", "@alice:hs1.test"}},
		{"anyOptOut", qAnyOptOut, []any{"pop1@example.org"}},
		{"vouch", qVouch, []any{int64(3)}},
		{"firstVouchDue", qFirstVouchDue, nil},
		{"deliveriesOf", qDeliveriesOf, []any{int64(3)}},
		{"deliveriesTo", qDeliveriesTo, []any{"email", "pop1@example.org"}},
		{"records", qRecords, []any{int64(0), int64(1000)}},
		{"descend all", qDescendAll, []any{int64(1 << 62), int64(256)}},
	}
	for _, kind := range []string{byState, bySender, byRoom, byAlias, byHomeserver} {
		queries = append(queries, struct {
			name string
			sql  string
			args []any
		}{"descend " + kind, descendQuery(sourceWhere(source{kind: kind})), []any{"x", int64(1 << 62), int64(256)}})
	}
	for _, q := range queries {
		var plan []string
		err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(t.Context(), `SET LOCAL enable_seqscan = off`); err != nil {
				return err
			}
			rows, err := tx.Query(t.Context(), `EXPLAIN `+q.sql, q.args...)
			if err != nil {
				return err
			}
			var line string
			_, err = pgx.ForEachRow(rows, []any{&line}, func() error { plan = append(plan, line); return nil })
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		if p := strings.Join(plan, "\n"); strings.Contains(p, "Seq Scan") {
			t.Errorf("%s scans a table:\n%s", q.name, p)
		}
	}
}

// benchDB is a database on backend for a benchmark: for PostgreSQL, the
// one HERALD_BENCH_POSTGRES_DSN names when set (a durable server: the test
// cluster runs with fsync off), else a fresh test database.
func benchDB(b *testing.B, backend store.Backend) *store.DB {
	if dsn := os.Getenv("HERALD_BENCH_POSTGRES_DSN"); dsn != "" && backend == store.BackendPostgres {
		return storetest.OpenPostgres(b, dsn)
	}
	return storetest.Open(b, backend)
}

// BenchmarkStoreInviteTx measures store-invite's storage transaction (the
// invite with its indexes, de-duplication entry and counters, after the
// de-duplication and opt-out checks: storeTx, run by store.DB.Commit) at 1
// and 16 goroutines, each storing invites to fresh addresses. The binding
// check, ephemeral key and outbox mail of the full transaction belong to
// the identity, keys and mailer packages and are not in it.
//
// The test cluster runs without fsync; HERALD_BENCH_POSTGRES_DSN (a
// database of a durable PostgreSQL) measures durable commits.
//
//	go test ./invites/ -run '^$' -bench 'BenchmarkStoreInviteTx' -benchtime 3000x
func BenchmarkStoreInviteTx(b *testing.B) {
	for _, backend := range storetest.Backends {
		for _, goroutines := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", backend, goroutines), func(b *testing.B) {
				clk := newClock()
				db := benchDB(b, backend)
				s := storageService(b, db, clk.Now)
				run := time.Now().UnixNano() // fresh addresses and tokens in a database used before
				var next atomic.Int64
				var failed atomic.Int64
				var runs atomic.Int64 // runs of the transaction function: retries show
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range goroutines {
					wg.Go(func() {
						for {
							k := next.Add(1)
							if k > int64(b.N) {
								return
							}
							inv := testInvite(int(k), clk.Now())
							inv.Address = fmt.Sprintf("bench%d-%d@example.org", run, k)
							inv.Token = fmt.Sprintf("bench-token-%d-%d", run, k)
							if err := db.Commit(func(tx *store.Tx) error {
								runs.Add(1)
								_, _, err := s.storeTx(tx, inv, nil, nil, clk.Now())
								return err
							}); err != nil {
								failed.Add(1)
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d of %d store-invite transactions failed", n, b.N)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tx/s")
				b.ReportMetric(float64(runs.Load()-int64(b.N))/float64(b.N), "retries/tx")
				b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
			})
		}
	}
}

// BenchmarkConsoleList100k measures the console's invite lists at 100,000
// invites (nine in ten finished): the newest page, a page of one sender,
// the newest pending, and the dashboard's counts.
//
//	go test ./invites/ -run '^$' -bench 'BenchmarkConsoleList100k' -benchtime 200x
func BenchmarkConsoleList100k(b *testing.B) {
	for _, backend := range storetest.Backends {
		b.Run(string(backend), func(b *testing.B) {
			clk := newClock()
			db := storetest.Open(b, backend)
			s := storageService(b, db, clk.Now)
			populate(b, s, clk, 100_000)
			if db.Backend() == store.BackendPostgres {
				// As autovacuum leaves it: statistics and the visibility
				// map (index-only scans) up to date.
				if _, err := db.PG().Pool().Exec(b.Context(), `VACUUM ANALYZE`); err != nil {
					b.Fatal(err)
				}
			}
			now := clk.Now()
			for _, c := range []struct {
				name string
				fn   func() error
			}{
				{"newest", func() error { _, _, err := s.List(Filter{Limit: 50}); return err }},
				{"sender page 10", func() error { _, _, err := s.List(Filter{Sender: "@bob:hs1.test", Limit: 50, Offset: 450}); return err }},
				{"pending", func() error { _, err := s.ListDisplayed(Filter{Limit: 50}, StatePending, now, nil); return err }},
				{"counts", func() error { _, err := s.DisplayCounts(now, nil); return err }},
			} {
				b.Run(c.name, func(b *testing.B) {
					for b.Loop() {
						if err := c.fn(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}
