package pgqueue_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/pgstore/pgqueue"
)

// TestClaimPlansReadFewRowsWithStaleStatistics: the claim's statements (the
// floor, the claim, the next-claim query, the reap's search for dead
// owners) read a handful of rows however many records are pending, also
// with the generic plan that PostgreSQL caches for a prepared statement,
// made from statistics taken while the queue was at rest (autovacuum's
// ANALYZE runs when it likes; a backlog builds within seconds). Under such
// a plan the floor query, written as min(next_attempt), read every pending
// entry; and so did the reap, one UPDATE filtering the pending records,
// and the next-claim query's look for other replicas' leases on a lone
// replica, both asked without an order that only queue_records_leased
// gives (3,000 rows of 3,000 here; 176-192 ms per reap under a backlog of
// 30,000 mails).
func TestClaimPlansReadFewRowsWithStaleStatistics(t *testing.T) {
	ctx := testCtx(t)
	db, a := replica(t, migrated(t), "q")
	pool := db.Pool()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// The statistics of a queue at rest: every record attempted (leased,
	// which leaves entries in queue_records_leased until VACUUM) and done.
	enqueueN(t, a, 3000, t0.Add(-time.Hour))
	if _, err := pool.Exec(ctx, `UPDATE queue_records SET lease_until = created, lease_owner = 7`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE queue_records SET state = 'done', finished = created, lease_until = NULL, lease_owner = NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE queue_records`); err != nil {
		t.Fatal(err)
	}
	// Then a backlog, a few of whose records another replica holds.
	const pending = 3000
	ids := enqueueN(t, a, pending, t0)
	if _, err := pool.Exec(ctx, `UPDATE queue_records SET lease_until = $2, lease_owner = 7 WHERE id = ANY($1)`,
		ids[:5], t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}

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
		// A lone replica: the leases are its own (owner 7), so the
		// next-claim query finds no other replica's lease to stop at.
		{"next_alone", pgqueue.NextQuery, `'q', ` + now + `, ` + now + ` + interval '1 second', '{1,2}'::bigint[], ` +
			now + ` + interval '2 seconds', 7, '2026-03-01 11:59:59+00'::timestamptz`},
		{"reap", pgqueue.DeadOwnersQuery, `'q', 999`},
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
			t.Errorf("%s: a scan of its generic plan read %v rows of %d pending (want a handful):\n%s", q.name, rows, pending, out)
		}
	}
}

// planNode is a node of EXPLAIN (ANALYZE, FORMAT JSON).
type planNode struct {
	NodeType   string  `json:"Node Type"`
	Relation   string  `json:"Relation Name"`
	ActualRows float64 `json:"Actual Rows"`
	// Filtered is the rows the node read and its filter refused.
	Filtered float64    `json:"Rows Removed by Filter"`
	Loops    float64    `json:"Actual Loops"`
	Plans    []planNode `json:"Plans"`
}

// maxScanRows is the most rows any scan of queue_records in the tree read,
// over all its loops: the rows it returned and the rows its filter refused
// (EXPLAIN gives both per loop). The reap's scan of pg_locks is left out:
// it reads the locks of the whole test cluster.
func (n planNode) maxScanRows() float64 {
	m := 0.0
	if strings.Contains(n.NodeType, "Scan") && n.Relation == "queue_records" {
		m = (n.ActualRows + n.Filtered) * max(n.Loops, 1)
	}
	for _, c := range n.Plans {
		m = max(m, c.maxScanRows())
	}
	return m
}
