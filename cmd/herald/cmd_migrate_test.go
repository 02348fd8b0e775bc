package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/store"
)

// herald migrate-storage copies a stopped data dir's queues into an empty
// PostgreSQL database and verifies them; it refuses a non-empty target, an
// interrupted copy is refused until --restart starts it over, and Herald
// refuses to serve an unfinished copy. The DSN is never printed.
func TestMigrateStorage(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.SMTP.Host = "" // dev mailbox; the worker is not started, so mail stays pending
	a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"zoe@example.org", "yan@example.org", "xia@example.org"} {
		err := a.DB().Update(func(tx *store.Tx) error {
			_, err := a.Mailer().Enqueue(tx, mailer.Message{To: to, Subject: "hello", Text: "hi", Kind: "invite"})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	a.Close()

	dsn := pgtest.DSN(t)
	env := []string{"HERALD_DATA_DIR=" + dir, "HERALD_STORAGE_POSTGRES_DSN=" + dsn}
	migrate := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"migrate-storage", "--to", "postgres"}, args...), env, &out, &errOut)
		if strings.Contains(out.String()+errOut.String(), dsn) || (err != nil && strings.Contains(err.Error(), dsn)) {
			t.Errorf("the DSN was printed")
		}
		return out.String(), err
	}
	out, err := migrate()
	if err != nil {
		t.Fatalf("migrate-storage: %v\n%s", err, out)
	}
	if !strings.Contains(out, "queue outbox") || !strings.Contains(out, "verified") || strings.Contains(out, "DIFFERENT") {
		t.Fatalf("output:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[0] == "queue" && f[1] == "outbox" && (f[2] != "3" || f[3] != "3") {
			t.Fatalf("outbox counts: %q", line)
		}
	}

	// The copy is there: read it through pgqueue.
	ctx := context.Background()
	pg, err := pgstore.Open(ctx, pgstore.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	outbox, _ := pgqueue.New(pg, "outbox")
	if s, err := outbox.Stats(ctx, time.Now().Add(-time.Hour)); err != nil || s.Pending != 3 {
		t.Fatalf("outbox on PostgreSQL: %+v %v", s, err)
	}

	if _, err := migrate(); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("a second run into the filled target: %v", err)
	}
	if _, err := migrate("--restart"); err == nil || !strings.Contains(err.Error(), "not") {
		t.Fatalf("--restart on a finished copy: %v", err)
	}

	// An interrupted run leaves the copy unfinished.
	if _, err := pg.Pool().Exec(ctx, "UPDATE "+server.MigrationTable+" SET finished = NULL"); err != nil {
		t.Fatal(err)
	}
	pcfg := cfg
	pcfg.Storage.Backend, pcfg.Storage.Postgres.DSN = config.StoragePostgres, config.Secret(dsn)
	if _, err := server.New(&pcfg, slog.New(slog.DiscardHandler), server.Options{}); err == nil || !strings.Contains(err.Error(), "unfinished") {
		t.Fatalf("Herald started on an unfinished copy: %v", err)
	}
	if _, err := migrate(); err == nil || !strings.Contains(err.Error(), "--restart") {
		t.Fatalf("a run into an unfinished copy: %v", err)
	}
	if out, err := migrate("--restart"); err != nil || strings.Contains(out, "DIFFERENT") {
		t.Fatalf("--restart: %v\n%s", err, out)
	}
	if s, err := outbox.Stats(ctx, time.Now().Add(-time.Hour)); err != nil || s.Pending != 3 {
		t.Fatalf("outbox after --restart: %+v %v", s, err)
	}
}

// A difference in a count, a checksum or a missing table is printed and
// counted (migrate-storage then exits 1).
func TestMigrateSumsShowDifferences(t *testing.T) {
	want := []store.TableSum{{Table: "queue outbox", Count: 2, Sum: "aa"}, {Table: "queue onbind", Count: 1, Sum: "bb"}, {Table: "keys", Count: 1, Sum: "cc"}}
	got := []store.TableSum{{Table: "queue outbox", Count: 2, Sum: "aa"}, {Table: "queue onbind", Count: 1, Sum: "bc"}}
	var out bytes.Buffer
	if n := printSums(&out, want, got); n != 3 { // onbind's sum, keys missing, one table fewer
		t.Fatalf("%d differences, want 3:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "queue onbind") || strings.Count(out.String(), "DIFFERENT") != 2 || strings.Count(out.String(), " ok") != 1 {
		t.Fatalf("output:\n%s", out.String())
	}
	if n := printSums(io.Discard, want[:2], want[:2]); n != 0 {
		t.Fatalf("equal sums: %d differences", n)
	}
}
