package identity

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
)

// Every query of a hot path, a sweep or the console reaches its rows through
// an index: with sequential scans disabled, none of their plans has one (a
// query without a usable index would still get one).
func TestPostgresPlansUseIndexes(t *testing.T) {
	db := storetest.OpenPostgres(t, pgtest.DSN(t))
	ctx := context.Background()
	conn, err := db.PG().Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	h, now := make([]byte, 32), time.Now()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`SELECT hash, mxid FROM identity_lookup_hashes WHERE hash = ANY($1::bytea[])`, []any{[][]byte{h, h}}},
		{`SELECT gen, hash, mxid FROM identity_lookup_changes WHERE gen > $1 ORDER BY gen LIMIT 10`, []any{1}},
		{`DELETE FROM identity_lookup_changes WHERE at < now() - $1::interval`, []any{"1 hour"}},
		{`SELECT ` + bindingCols + ` FROM identity_bindings WHERE medium = $1 AND address = $2`, []any{"email", "a@example.org"}},
		{`SELECT ` + bindingCols + ` FROM identity_bindings WHERE (medium, address) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, []any{[]string{"email"}, []string{"a"}}},
		{`SELECT ` + bindingCols + ` FROM identity_bindings WHERE (medium, address) > ($1, $2) ORDER BY medium, address LIMIT 10`, []any{"email", "a"}},
		{`SELECT user_id FROM identity_accounts WHERE token_hash = $1`, []any{h}},
		{`SELECT token_hash FROM identity_accounts WHERE expired IS NOT NULL AND expired < $1 LIMIT 10`, []any{now}},
		{`SELECT token_hash FROM identity_accounts WHERE expired IS NULL AND last_used IS NULL LIMIT 10`, nil},
		{`SELECT token_hash FROM identity_accounts WHERE expired IS NULL AND last_used < $1 LIMIT 10`, []any{now}},
		{`SELECT policy, version FROM identity_terms WHERE user_id = $1`, []any{"@a:b"}},
		{`SELECT ` + sessionCols + ` FROM identity_sessions WHERE sid = $1`, []any{"s"}},
		{`SELECT sid FROM identity_sessions WHERE updated < $1 LIMIT 10`, []any{now}},
		{`SELECT sid FROM identity_sessions WHERE address = $1 AND medium IN ('email', '')`, []any{"a@example.org"}},
		{`SELECT sid FROM identity_session_keys WHERE key = $1`, []any{h}},
		{`SELECT key FROM identity_session_keys WHERE sid = ANY($1::text[])`, []any{[]string{"s"}}},
	} {
		rows, err := conn.Query(ctx, `EXPLAIN `+q.sql, q.args...)
		if err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		rows.Close()
		if p := strings.Join(plan, "\n"); strings.Contains(p, "Seq Scan") {
			t.Errorf("%s\nscans a whole table:\n%s", q.sql, p)
		}
	}
}
