package identity_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/loadgen"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

// FuzzLookup: whatever the body, /v2/lookup answers below 500 with a
// well-formed answer (testenv validates it against the spec).
func FuzzLookup(f *testing.F) {
	e := testenv.Start(f)
	tok := e.Register(f, "@fuzz:hs.test")
	bindAll(f, e, "alice@example.com", "@alice:hs.test")
	pepper, _, _ := e.App.Identity().Pepper()
	for _, b := range []any{
		map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{identity.LookupHash("alice@example.com", "email", pepper), "x"}},
		map[string]any{"algorithm": "none", "pepper": pepper, "addresses": []string{"alice@example.com email", " email", "a b c"}},
		map[string]any{"algorithm": "none", "pepper": pepper, "addresses": []any{1, nil}},
		map[string]any{"algorithm": []int{}, "pepper": pepper, "addresses": []string{}},
		map[string]any{"algorithm": "sha256", "pepper": nil, "addresses": nil},
	} {
		raw, _ := json.Marshal(b)
		f.Add(raw)
	}
	for _, s := range []string{"", "{}", "[]", "null", "{\"addresses\":{}}", "\xff", `{"algorithm":"sha256"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/lookup", body, tok)
		if status >= 500 {
			t.Fatalf("status %d: %s", status, raw)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer is not a JSON object: %q", raw)
		}
		if _, ok := m["mappings"].(map[string]any); status == 200 && !ok {
			t.Fatalf("200 without mappings: %s", raw)
		}
		if code, _ := m["errcode"].(string); status != 200 && !strings.HasPrefix(code, "M_") {
			t.Fatalf("error without errcode: %d %s", status, raw)
		}
	})
}

// BenchmarkLookup1000 posts 1,000 sha256 hashes (half of them bound) per
// request through the HTTP stack, with 1,000, 100,000 and 1,000,000 bindings
// stored: the cost must not depend on the number of bindings. One lookup
// before the timer builds the in-memory lookup index.
func BenchmarkLookup1000(b *testing.B) {
	for _, stored := range []int{1000, 100000, 1000000} {
		b.Run(fmt.Sprintf("bindings=%d", stored), func(b *testing.B) {
			e := testenv.Start(b)
			tok := e.Register(b, "@bench:hs.test")
			id := e.App.Identity()
			// Stored as an import does (hash index entries in key order):
			// a million PutBinding calls would take minutes.
			for start := 0; start < stored; start += 100000 {
				err := id.DB().Update(func(tx *store.Tx) error {
					bi, err := id.ImportBindings(tx)
					if err != nil {
						return err
					}
					for i := start; i < start+100000 && i < stored; i++ {
						if _, err := bi.Add(identity.Binding{Medium: "email", Address: fmt.Sprintf("user%d@example.org", i), MXID: fmt.Sprintf("@u%d:hs.test", i)}); err != nil {
							return err
						}
					}
					return bi.Close()
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			pepper, _, _ := id.Pepper()
			addrs := make([]string, 1000)
			for i := range addrs {
				n := i // even i bound, odd i not: half bound
				if i%2 == 1 {
					n = stored + i
				}
				addrs[i] = identity.LookupHash(fmt.Sprintf("user%d@example.org", n), "email", pepper)
			}
			body, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": addrs})
			// internal/loadgen: one keep-alive connection per goroutine, the
			// request prepared once, so the CPU measured is Herald's more
			// than the client's.
			req := loadgen.NewRequest(e.URL, "POST", "/_matrix/identity/v2/lookup", body,
				"Content-Type", "application/json", "Authorization", "Bearer "+tok)
			if st, _ := e.Do(b, http.MethodPost, "/_matrix/identity/v2/lookup", body, tok); st != 200 {
				b.Fatalf("warm-up lookup: %d", st)
			}
			b.ReportAllocs()
			b.SetParallelism(4)
			b.ResetTimer()
			cpu0 := cpuNow()
			b.RunParallel(func(pb *testing.PB) {
				c, err := loadgen.Dial(e.URL)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				for pb.Next() {
					st, ans, err := c.Do(req)
					if err != nil || st != 200 || bytes.Count(ans, []byte(`":"@u`)) != 500 {
						b.Errorf("lookup: %d %.200s %v", st, ans, err)
						return
					}
				}
			})
			b.StopTimer()
			// The whole in-process stack's heap (lookup index included).
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
			b.ReportMetric(float64((cpuNow()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
		})
	}
}

// cpuNow is the process's user+system CPU time. Benchmarks report CPU per
// operation (client, server and workers together) because wall-clock rates
// on a shared machine say more about the neighbours than about Herald.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
