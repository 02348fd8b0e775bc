// Package pgtest gives tests a real PostgreSQL: one throwaway cluster per test
// binary (initdb in a temporary directory, listening on a unix socket in that
// directory only, fsync off), and a fresh database per test, so tests that use
// it can run in parallel. It never mocks PostgreSQL.
//
// A package whose tests use it calls Main from TestMain, which stops the
// cluster and removes its directory when the tests are done:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// PostgreSQL's server binaries are looked up in $PG_BIN_DIR, else the newest
// /usr/lib/postgresql/NN/bin (Debian's postgresql package; .ci/run installs
// it). With CI=true a missing PostgreSQL fails the test; elsewhere one line
// says the PostgreSQL tests were not run and they are skipped, the same rule
// the spec validator follows for a missing Matrix spec.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDirVar names a test variable pointing at PostgreSQL's server binaries
// (initdb, postgres). Like MATRIX_SPEC_DIR it lacks Herald's HERALD_ prefix:
// tests pass their environment to the built binary, which reads HERALD_* as
// configuration.
const BinDirVar = "PG_BIN_DIR"

// debianGlob finds Debian's PostgreSQL server binaries, one directory per
// major version.
var debianGlob = "/usr/lib/postgresql/*/bin/initdb"

// errNoPostgres means no PostgreSQL server binaries were found.
var errNoPostgres = errors.New("pgtest: PostgreSQL not found")

// cluster is the running throwaway PostgreSQL of this test binary.
type cluster struct {
	dir     string // temporary directory: data/ and the socket
	sockDir string
	user    string // the database superuser initdb created
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *os.File
}

var (
	startOnce sync.Once
	started   *cluster
	startErr  error
	dbSeq     atomic.Int64

	noteOnce sync.Once
	noteOut  io.Writer = os.Stderr
)

// Main runs the tests and then stops the cluster, if a test started one, and
// removes its directory. It returns m.Run's exit code.
func Main(m *testing.M) int {
	code := m.Run()
	if started != nil {
		if err := started.stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// DSN starts the cluster on first use and returns the connection string of a
// new, empty database for this test alone, dropped when the test ends.
// Without PostgreSQL it fails the test under CI=true and skips it otherwise.
func DSN(t testing.TB) string {
	t.Helper()
	return copyOf(t, get(t), "template0")
}

var (
	templatesMu sync.Mutex
	templates   = map[string]*template{}
)

type template struct {
	once sync.Once
	err  error
}

// DSNFrom is DSN for a database that starts as a copy of a template: the
// first call for a name creates database name, runs setup on it (apply the
// migrations, load fixtures) and freezes it; every call returns a new copy.
// Copying is faster than running setup for each test. setup must close its
// connections: any left are ended when the template is frozen.
func DSNFrom(t testing.TB, name string, setup func(ctx context.Context, dsn string) error) string {
	t.Helper()
	c := get(t)
	templatesMu.Lock()
	tp, ok := templates[name]
	if !ok {
		tp = &template{}
		templates[name] = tp
	}
	templatesMu.Unlock()
	tp.once.Do(func() { tp.err = c.makeTemplate(name, setup) })
	if tp.err != nil {
		t.Fatalf("pgtest: template %s: %v", name, tp.err)
	}
	return copyOf(t, c, name)
}

// makeTemplate creates database name, runs setup on it, then forbids
// connections to it, so that copies of it can be made at the same time.
func (c *cluster) makeTemplate(name string, setup func(ctx context.Context, dsn string) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, c.dsn("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		return err
	}
	if err := setup(ctx, c.dsn(name)); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return err
	}
	_, err = admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
	return err
}

// copyOf creates a new database from template for this test and drops it
// when the test ends.
func copyOf(t testing.TB, c *cluster, template string) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, c.dsn("postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer admin.Close(ctx)
	// Templates take no connections (template0 never does, ours are
	// frozen), so any number of tests may copy one at once: CREATE DATABASE
	// refuses a template that has sessions.
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.dsn("postgres"))
		if err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		// FORCE ends the sessions a test left open (a pool not closed, a
		// connection the test killed on purpose).
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return c.dsn(name)
}

// AdminDSN is the connection string of the cluster's maintenance database
// "postgres", as the superuser: for tests that end other sessions
// (pg_terminate_backend) or inspect the whole cluster.
func AdminDSN(t testing.TB) string {
	t.Helper()
	return get(t).dsn("postgres")
}

func get(t testing.TB) *cluster {
	t.Helper()
	startOnce.Do(func() { started, startErr = start() })
	if startErr == nil {
		return started
	}
	if errors.Is(startErr, errNoPostgres) && !required() {
		noteOnce.Do(func() {
			fmt.Fprintf(noteOut, "pgtest: NOTE: PostgreSQL tests were not run (no initdb in $%s or "+
				"/usr/lib/postgresql/NN/bin; apt-get install postgresql; CI=true requires it)\n", BinDirVar)
		})
		t.Skip("PostgreSQL not installed")
	}
	t.Fatal(startErr)
	return nil
}

// required says PostgreSQL must be there: CI always has it (CI=true).
func required() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// binDir finds the directory holding initdb and postgres.
func binDir() (string, error) {
	if d := os.Getenv(BinDirVar); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("pgtest: %s=%s has no initdb: %w", BinDirVar, d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob(debianGlob)
	if len(dirs) == 0 {
		return "", errNoPostgres
	}
	// The newest major version: compare numerically (9.6 < 10 < 15).
	sort.Slice(dirs, func(i, j int) bool { return major(dirs[i]) < major(dirs[j]) })
	return filepath.Dir(dirs[len(dirs)-1]), nil
}

func major(initdb string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(initdb))), 64)
	return v
}

// start runs initdb in a new temporary directory and starts postgres on a
// unix socket there, as an unprivileged user when the tests run as root
// (initdb and postgres refuse to run as root).
func start() (*cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	removeStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	// Who made it, so a later run can remove it if this one dies first.
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &cluster{dir: dir, sockDir: dir, user: "herald_test", exited: make(chan struct{})}
	fail := func(err error) (*cluster, error) {
		if c.cmd != nil && c.cmd.Process != nil {
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
		_ = os.RemoveAll(dir)
		return nil, err
	}
	run, err := asServerUser(dir)
	if err != nil {
		return fail(err)
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", c.user,
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	run(initdb)
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("pgtest: initdb: %v\n%s", err, out))
	}
	c.log, err = os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return fail(fmt.Errorf("pgtest: %w", err))
	}
	// Only the socket in dir: no TCP port, nothing another process on the
	// machine can reach by accident. Durability is not what tests measure,
	// so fsync and its relatives are off.
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses=",
		"-c", "unix_socket_directories="+c.sockDir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "shared_buffers=32MB",
		"-c", "log_min_messages=warning",
	)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	run(c.cmd)
	if err := c.cmd.Start(); err != nil {
		return fail(fmt.Errorf("pgtest: start postgres: %w", err))
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	if err := c.waitReady(60 * time.Second); err != nil {
		return fail(err)
	}
	return c, nil
}

// waitReady waits until the server accepts connections or exits.
func (c *cluster) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, c.dsn("postgres"))
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("pgtest: postgres exited at start-up:\n%s", c.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres not ready after %v: %v\n%s", limit, err, c.logTail())
		}
	}
}

func (c *cluster) logTail() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
	s := string(b)
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return strings.TrimSpace(s)
}

const (
	dirPrefix = "herald-pgtest-"
	ownerFile = "owner.pid"
)

// removeStale removes the clusters of test binaries that died without
// stopping theirs (a panic, a timeout, kill -9), so they do not pile up in
// the temporary directory: those whose owner and postmaster are both gone.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		// A directory just made may not have its owner file yet.
		if fi, err := os.Stat(d); err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if alive(pidIn(filepath.Join(d, ownerFile))) || alive(pidIn(filepath.Join(d, "data", "postmaster.pid"))) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

// pidIn reads the process id on the first line of a file; 0 if none.
func pidIn(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// dsn is a keyword/value connection string for database db on the socket.
func (c *cluster) dsn(db string) string {
	return fmt.Sprintf("host=%s user=%s dbname=%s sslmode=disable", c.sockDir, c.user, db)
}

// stop shuts the server down (fast shutdown: sessions are ended) and removes
// the directory.
func (c *cluster) stop() error {
	defer c.log.Close()
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("pgtest: remove %s: %w", c.dir, err)
	}
	return nil
}
