package pgstore

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/internal/pgtest"
)

// A helper process is this test binary run with helperVar set to what it
// should do (and helperDSNVar to its database): it does that and blocks until
// the test kills it with SIGKILL, the way a replica dies.
const (
	helperVar    = "PGSTORE_TEST_HELPER"
	helperDSNVar = "PGSTORE_TEST_HELPER_DSN"
)

// slowMigration is a migration after the embedded ones that takes a minute.
func slowMigration() fstest.MapFS {
	return fstest.MapFS{
		nextMigration("slow"): {Data: []byte("CREATE TABLE slow (x int);\nSELECT pg_sleep(60);")},
	}
}

// runHelper is called from TestMain in a helper process.
func runHelper(what, dsn string) {
	ctx := context.Background()
	switch what {
	case "periodic":
		db, err := Open(ctx, Options{DSN: dsn})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		db.RunPeriodic(ctx, Job{Name: "sweep", Period: time.Hour, Poll: 5 * time.Millisecond,
			Run: func(ctx context.Context) error {
				fmt.Println("running")
				<-ctx.Done()
				return ctx.Err()
			}})
	case "migrate":
		fsys := slowMigration()
		names, _ := fs.Glob(embedded, "*.sql")
		for _, n := range names {
			b, _ := fs.ReadFile(embedded, n)
			fsys[n] = &fstest.MapFile{Data: b}
		}
		_, err := Open(ctx, Options{DSN: dsn, migrations: fsys})
		fmt.Println("error: Open returned", err)
		os.Exit(2)
	}
	fmt.Println("error: unknown helper", what)
	os.Exit(2)
}

// startHelper starts a helper process and waits for the line it prints
// when it is ready to be killed (empty: none).
func startHelper(t *testing.T, what, dsn, ready string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperVar+"="+what, helperDSNVar+"="+dsn)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if ready == "" {
		go func() { _, _ = bufio.NewReader(out).WriteTo(os.Stdout) }()
		return cmd
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok || l != ready {
			t.Fatalf("helper %s said %q, want %q", what, l, ready)
		}
	case <-time.After(deadline):
		t.Fatalf("helper %s not ready", what)
	}
	return cmd
}

func kill9(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

// A replica running a sweep is killed (SIGKILL): PostgreSQL ends its
// session and frees the lock, and another replica runs the sweep.
func TestPeriodicTakenOverWhenHolderIsKilled(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	open(t, ctx, Options{DSN: dsn}).Close() // migrate before the helper does
	holder := startHelper(t, "periodic", dsn, "running")

	var b counter
	ran := make(chan struct{})
	db := open(t, ctx, Options{DSN: dsn})
	runPeriodic(t, db, Job{
		Name: "sweep", Period: time.Hour, Poll: 5 * time.Millisecond,
		Run:       func(context.Context) error { close(ran); return nil },
		attempted: b.hook,
	})
	waitFor(t, "this replica to find the sweep held 10 times", func() bool { return b.attempts.Load() >= 10 })
	if b.ran.Load() != 0 {
		t.Fatal("the sweep ran here while the helper held it")
	}
	kill9(t, holder)
	recv(t, "this replica to take the sweep over", ran)
}

// A replica killed in the middle of a migration leaves the database as it
// was: the migration's transaction rolls back, the migration lock goes with
// its session, and the next replica applies the migration.
func TestMigrationKilledHalfwayIsAppliedByTheNextReplica(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	open(t, ctx, Options{DSN: dsn}).Close() // the embedded migrations
	migrating := startHelper(t, "migrate", dsn, "")
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	waitFor(t, "the helper to be inside the slow migration", func() bool {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()").Scan(&n)
		return err == nil && n == 1
	})
	kill9(t, migrating)

	// The next replica has a fixed slow migration (as after a bad release).
	fixed := withMigration(t, fstest.MapFS{nextMigration("slow"): {Data: []byte("CREATE TABLE slow (x int);")}})
	// Its checksum differs from the killed one's: Open would refuse it had
	// the killed replica recorded its migration.
	db := open(t, ctx, Options{DSN: dsn, migrations: fixed})
	v, err := db.SchemaVersion(ctx)
	if want := embeddedVersions() + 1; err != nil || v != want {
		t.Fatalf("schema version %d, %v; want %d", v, err, want)
	}
	var slow bool
	if err := db.Pool().QueryRow(ctx, "SELECT to_regclass('slow') IS NOT NULL").Scan(&slow); err != nil || !slow {
		t.Fatalf("the migration's table: %v, %v", slow, err)
	}
}
