package pgtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// helperGlobVar, in the environment of this test binary run by
// TestWithoutPostgres, replaces where Debian's binaries are looked for.
const helperGlobVar = "PGTEST_HELPER_GLOB"

func TestMain(m *testing.M) {
	if g := os.Getenv(helperGlobVar); g != "" {
		debianGlob = g
	}
	os.Exit(Main(m))
}

// Without PostgreSQL: outside CI one line says the PostgreSQL tests were not
// run and they pass (skipped); with CI=true they fail.
func TestWithoutPostgres(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNeedsPostgres$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), helperGlobVar+"="+filepath.Join(t.TempDir(), "*", "bin", "initdb"), "CI="+ci, BinDirVar+"=")
		out, err := cmd.CombinedOutput()
		notes := strings.Count(string(out), "pgtest: NOTE: PostgreSQL tests were not run")
		switch {
		case ci == "" && (err != nil || notes != 1 || !strings.Contains(string(out), "--- SKIP: TestHelperNeedsPostgres/b")):
			t.Fatalf("outside CI without PostgreSQL: %v, %d notes, want success, one note and skipped tests:\n%s", err, notes, out)
		case ci == "true" && (err == nil || notes != 0 || !strings.Contains(string(out), "PostgreSQL not found")):
			t.Fatalf("with CI=true without PostgreSQL: %v, want a failure naming the cause:\n%s", err, out)
		}
	}
}

// TestHelperNeedsPostgres is two tests that need PostgreSQL, when run by
// TestWithoutPostgres; in an ordinary run it does nothing.
func TestHelperNeedsPostgres(t *testing.T) {
	if os.Getenv(helperGlobVar) == "" {
		return
	}
	for _, name := range []string{"a", "b"} {
		t.Run(name, func(t *testing.T) { DSN(t) })
	}
}

// Each test gets its own empty database on the socket, not a TCP port, and
// what one test writes another does not see.
func TestDSNGivesEachTestItsOwnDatabase(t *testing.T) {
	dsns := make(chan string, 2)
	// The group returns when both parallel subtests are done.
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"a", "b"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dsn := DSN(t)
				dsns <- dsn
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				var tables int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
					t.Fatal(err)
				}
				if tables != 0 {
					t.Fatalf("a new database has %d tables", tables)
				}
				if _, err := conn.Exec(ctx, "CREATE TABLE mine (x int)"); err != nil {
					t.Fatal(err)
				}
				var listen string
				if err := conn.QueryRow(ctx, "SHOW listen_addresses").Scan(&listen); err != nil {
					t.Fatal(err)
				}
				if listen != "" {
					t.Fatalf("listen_addresses = %q, want only the unix socket", listen)
				}
				if conn.PgConn().Conn().RemoteAddr().Network() != "unix" {
					t.Fatalf("connected over %s, want unix", conn.PgConn().Conn().RemoteAddr().Network())
				}
			})
		}
	})
	close(dsns)
	if a, b := <-dsns, <-dsns; a == b {
		t.Fatalf("two tests got the same database %q", a)
	}
}

// The directory of a test binary that died without stopping its cluster is
// removed by the next start; a live one's is not.
func TestRemoveStale(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	mk := func(name string, pid int, mtime time.Time) string {
		d := filepath.Join(tmp, dirPrefix+name)
		if err := os.MkdirAll(filepath.Join(d, "data"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(d, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return d
	}
	stale := mk("stale", dead.Process.Pid, old)
	live := mk("live", os.Getpid(), old)
	young := mk("young", 0, time.Now()) // owner file not written yet
	removeStale()
	for d, want := range map[string]bool{stale: false, live: true, young: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

// Copies of a template start with what its setup made, setup runs once, and
// each copy is the test's own.
func TestDSNFromCopiesATemplate(t *testing.T) {
	var setups atomic.Int32
	setup := func(ctx context.Context, dsn string) error {
		setups.Add(1)
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		// Left open on purpose: freezing the template ends it.
		_, err = conn.Exec(ctx, "CREATE TABLE seeded (x int); INSERT INTO seeded VALUES (42)")
		return err
	}
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"a", "b", "c"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dsn := DSNFrom(t, "seeded_template", setup)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				var x int
				if err := conn.QueryRow(ctx, "SELECT x FROM seeded").Scan(&x); err != nil || x != 42 {
					t.Fatalf("copy has %d, %v; want the template's 42", x, err)
				}
				// Writes to one copy are that test's alone.
				if _, err := conn.Exec(ctx, "DELETE FROM seeded"); err != nil {
					t.Fatal(err)
				}
			})
		}
	})
	if n := setups.Load(); n != 1 {
		t.Fatalf("setup ran %d times; want 1", n)
	}
}
