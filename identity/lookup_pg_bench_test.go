package identity

import (
	"context"
	"encoding/base64"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/pgstore"
)

// benchPepper is the pepper of the benchmark databases.
const benchPepper = "benchpepper"

func benchAddress(i int) string { return fmt.Sprintf("user%07d@example.org", i) }

// populatePG fills an empty database with n bindings and their hash index
// entries, through COPY (what an import of that size would cost through
// PutBinding is not what is measured).
func populatePG(n int) func(ctx context.Context, dsn string) error {
	return func(ctx context.Context, dsn string) error {
		pg, err := pgstore.Open(ctx, pgstore.Options{DSN: dsn})
		if err != nil {
			return err
		}
		defer pg.Close()
		pool := pg.Pool()
		ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if _, err := pool.Exec(ctx, `INSERT INTO identity_lookup_pepper (pepper, created) VALUES ($1, $2)`, benchPepper, ts); err != nil {
			return err
		}
		_, err = pool.CopyFrom(ctx, pgx.Identifier{"identity_bindings"}, []string{"medium", "address", "mxid", "not_before", "not_after", "ts"},
			pgx.CopyFromFunc(func() func() ([]any, error) {
				i := 0
				return func() ([]any, error) {
					if i == n {
						return nil, nil
					}
					i++
					return []any{"email", benchAddress(i - 1), fmt.Sprintf("@user%07d:example.org", i-1), ts, ts.AddDate(100, 0, 0), ts}, nil
				}
			}()))
		if err != nil {
			return err
		}
		_, err = pool.CopyFrom(ctx, pgx.Identifier{"identity_lookup_hashes"}, []string{"hash", "mxid"},
			pgx.CopyFromFunc(func() func() ([]any, error) {
				i := 0
				return func() ([]any, error) {
					if i == n {
						return nil, nil
					}
					i++
					h := lookupHashRaw(benchAddress(i-1), "email", benchPepper)
					return []any{h[:], fmt.Sprintf("@user%07d:example.org", i-1)}, nil
				}
			}()))
		if err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, `UPDATE identity_binding_count SET n = $1`, n); err != nil {
			return err
		}
		_, err = pool.Exec(ctx, `VACUUM ANALYZE identity_lookup_hashes`)
		return err
	}
}

// BenchmarkLookupPostgres measures a v2 lookup of 1,000 hashes (half of them
// bound) on PostgreSQL at 100k and 1M bindings: one query bringing the
// replica's in-memory copy of the index up to date, then a probe of the copy
// per hash ("sql" instead: one statement probing the index's btree once per
// hash, what a replica does until its copy is built). "serial" is one lookup at a time on one
// replica; "2replicas" runs lookups from GOMAXPROCS goroutines spread over
// two replicas (two pools on one database), and reports the throughput as
// lookups/s.
func BenchmarkLookupPostgres(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("bindings=%dk", n/1000), func(b *testing.B) {
			dsn := pgtest.DSNFrom(b, fmt.Sprintf("identity_bench_%d", n), populatePG(n))
			clock := newClock()
			replicas := []*Service{
				newTestService(b, storetest.OpenPostgres(b, dsn), clock, 0),
				newTestService(b, storetest.OpenPostgres(b, dsn), clock, 0),
			}
			// 1,000 hashes: 500 bound, 500 not, differing per request.
			request := func(k int) []string {
				hs := make([]string, 1000)
				for j := range hs {
					i := (k*7919 + j*104729) % n
					if j%2 == 1 {
						hs[j] = LookupHash(fmt.Sprintf("nobody%d-%d@example.org", k, j), "email", benchPepper)
					} else {
						hs[j] = LookupHash(benchAddress(i), "email", benchPepper)
					}
				}
				return hs
			}
			reqs := make([][]string, 64)
			for k := range reqs {
				reqs[k] = request(k)
			}
			check := func(s *Service, hs []string) {
				got, err := s.LookupHashed("sha256", benchPepper, hs)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != 500 {
					b.Fatalf("%d of 500 bound hashes found", len(got))
				}
			}
			// The first lookup of each replica builds its in-memory copy.
			for _, s := range replicas {
				check(s, reqs[0])
			}
			b.Run("serial", func(b *testing.B) {
				for k := 0; b.Loop(); k++ {
					check(replicas[0], reqs[k%len(reqs)])
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
			})
			b.Run("2replicas", func(b *testing.B) {
				var next atomic.Int64
				b.SetParallelism(2) // 2 x GOMAXPROCS goroutines: the database does the work
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						k := int(next.Add(1))
						check(replicas[k%2], reqs[k%len(reqs)])
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
			})
			b.Run("sql", func(b *testing.B) {
				for k := 0; b.Loop(); k++ {
					hs := reqs[k%len(reqs)]
					keys := make([][32]byte, len(hs))
					for j, h := range hs {
						base64Decode(b, keys[j][:], h)
					}
					n := 0
					if _, err := lookupSQL(replicas[0].db, benchPepper, keys, func(int, []byte) { n++ }); err != nil || n != 500 {
						b.Fatalf("%d found, %v", n, err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
			})
			if c, err := replicas[1].BindingCount(); err != nil || c != n {
				b.Fatalf("count %d, %v", c, err)
			}
		})
	}
}

func base64Decode(b *testing.B, dst []byte, s string) {
	if n, err := base64.RawURLEncoding.Decode(dst, []byte(s)); err != nil || n != 32 {
		b.Fatalf("decode %q: %v", s, err)
	}
}
