package pgqueue_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/pgstore/pgqueue"
)

// TestClaimPlansReadFewRowsWithStaleStatistics: the claim's statements (the
// floor, the claim, the next-claim query) read a handful of rows however
// many records are pending, also with the
// generic plan that PostgreSQL caches for a prepared statement, made from
// statistics taken while the queue was empty (autovacuum's ANALYZE runs
// when it likes; a backlog builds within seconds). Written as
// min(next_attempt), the floor query read every pending entry under such a
// plan.
func TestClaimPlansReadFewRowsWithStaleStatistics(t *testing.T) {
	ctx := testCtx(t)
	db, a := replica(t, migrated(t), "q")
	pool := db.Pool()
	if _, err := pool.Exec(ctx, `ANALYZE queue_records`); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const pending = 3000
	enqueueN(t, a, pending, t0)

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx) // rolled back: the claim's EXPLAIN ANALYZE locks rows
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	now := `'2026-03-01 12:00:01+00'::timestamptz`
	for _, q := range []struct{ name, sql, args string }{
		{"floor", pgqueue.FloorQuery, `'q', ` + now},
		{"claim", pgqueue.ClaimQuery, `'q', ` + now + `, 11, '2026-03-01 11:59:59+00'::timestamptz`},
		{"next", pgqueue.NextQuery, `'q', ` + now + `, ` + now + ` + interval '1 second', '{1,2}'::bigint[], ` +
			now + ` + interval '2 seconds', 999, '2026-03-01 11:59:59+00'::timestamptz`},
	} {
		if _, err := tx.Exec(ctx, `PREPARE p_`+q.name+` AS `+q.sql); err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		var out string
		if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE p_`+q.name+`(`+q.args+`)`).Scan(&out); err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		var plans []struct{ Plan planNode }
		if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
			t.Fatalf("%s: %v %s", q.name, err, out)
		}
		if rows := plans[0].Plan.maxScanRows(); rows > 20 {
			t.Errorf("%s: a scan of its generic plan returned %v rows of %d pending (want a handful):\n%s", q.name, rows, pending, out)
		}
	}
}

// planNode is a node of EXPLAIN (ANALYZE, FORMAT JSON).
type planNode struct {
	NodeType   string     `json:"Node Type"`
	ActualRows float64    `json:"Actual Rows"`
	Plans      []planNode `json:"Plans"`
}

// maxScanRows is the most rows any scan node of the tree returned.
func (n planNode) maxScanRows() float64 {
	m := 0.0
	if strings.Contains(n.NodeType, "Scan") {
		m = n.ActualRows
	}
	for _, c := range n.Plans {
		m = max(m, c.maxScanRows())
	}
	return m
}
