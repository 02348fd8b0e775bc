package sydent_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/sydent"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestCopyImportRecordToPostgres: the record of a sydent import (its server
// name and key, which the server needs for sydent's key_validity_url paths
// and its invites' onbind) goes with `herald migrate-storage`, the sums of
// both sides match, and the server reads it back on PostgreSQL; importing
// straight into PostgreSQL is refused in one line.
func TestCopyImportRecordToPostgres(t *testing.T) {
	ctx := context.Background()
	g, err := sydentfixture.Generate(ctx, t.TempDir(), 5)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	if _, err := importInto(ctx, t, testConfig(t, dataDir), g.DB, g.Config, sydent.Options{}); err != nil {
		t.Fatal(err)
	}
	bdb, err := store.Open(dataDir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	src := store.NewBolt(bdb)
	defer src.Close()
	want, err := sydent.ImportedDeployment(src)
	if err != nil || want == nil {
		t.Fatalf("import record on bbolt: %+v %v", want, err)
	}

	dst := storetest.OpenPostgres(t, pgtest.DSN(t))
	if empty, err := sydent.SumStorage(ctx, dst); err != nil || empty[0].Count != 0 {
		t.Fatalf("sum of an empty target: %+v %v", empty, err)
	}
	copied := 0
	if err := sydent.CopyStorage(ctx, src, dst, func(n int) { copied += n }); err != nil {
		t.Fatal(err)
	}
	a, err := sydent.SumStorage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sydent.SumStorage(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if copied != 1 || len(a) != 1 || a[0] != b[0] || a[0].Count != 1 {
		t.Fatalf("copied %d; sums bbolt %+v, postgres %+v", copied, a, b)
	}
	got, err := sydent.ImportedDeployment(dst)
	if err != nil || got == nil || *got != *want {
		t.Fatalf("import record on PostgreSQL: %+v %v, want %+v", got, err, want)
	}

	_, err = sydent.Import(ctx, sydent.Target{DB: dst}, g.DB, nil, sydent.Options{})
	if err == nil || err.Error() != "herald import sydent writes a bbolt data_dir: import there, then copy it with herald migrate-storage --to postgres (docs/migrating-from-sydent.md)" {
		t.Fatalf("import into PostgreSQL: %v", err)
	}
}
