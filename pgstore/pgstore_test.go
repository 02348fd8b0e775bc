package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/internal/pgtest"
)

func TestMain(m *testing.M) {
	if what := os.Getenv(helperVar); what != "" {
		runHelper(what, os.Getenv(helperDSNVar))
	}
	os.Exit(pgtest.Main(m))
}

// deadline bounds every wait in these tests.
const deadline = 20 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// open is one "replica": its own pool on the test's database.
func open(t *testing.T, ctx context.Context, opts Options) *DB {
	t.Helper()
	db, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// embeddedVersions is how many migrations the binary embeds.
func embeddedVersions() int {
	ms, err := loadMigrations(embedded)
	if err != nil {
		panic(err)
	}
	return len(ms)
}

// nextMigration names a test's migration what with the version after the
// embedded ones, so these tests hold as migrations are added.
func nextMigration(what string) string {
	return fmt.Sprintf("%04d_%s.sql", embeddedVersions()+1, what)
}

// withMigration is the embedded migrations plus more files.
func withMigration(t *testing.T, extra fstest.MapFS) fs.FS {
	t.Helper()
	fsys := fstest.MapFS{}
	names, _ := fs.Glob(embedded, "*.sql")
	for _, n := range names {
		b, err := fs.ReadFile(embedded, n)
		if err != nil {
			t.Fatal(err)
		}
		fsys[n] = &fstest.MapFile{Data: b}
	}
	for n, f := range extra {
		fsys[n] = f
	}
	return fsys
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func recv(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(deadline):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestOpenAppliesEmbeddedMigrations(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	db := open(t, ctx, Options{DSN: dsn})
	ms, err := loadMigrations(embedded)
	if err != nil {
		t.Fatal(err)
	}
	v, err := db.SchemaVersion(ctx)
	if err != nil || v != len(ms) || v < 1 {
		t.Fatalf("schema version %d, %v; want %d", v, err, len(ms))
	}
	// Opening again applies nothing and fails on nothing.
	db.Close()
	db = open(t, ctx, Options{DSN: dsn})
	var rows int
	if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&rows); err != nil || rows != len(ms) {
		t.Fatalf("%d schema_migrations rows, %v; want %d", rows, err, len(ms))
	}
}

// Replicas starting at once: one applies each migration, the others wait on
// the advisory lock and find it done. Without the lock the second CREATE
// TABLE of a migration fails, or a version is recorded twice.
func TestMigrationsApplyOnceUnderConcurrency(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	fsys := withMigration(t, fstest.MapFS{
		nextMigration("slow"): {Data: []byte("SELECT pg_sleep(0.2);\nCREATE TABLE once (x int);\nINSERT INTO once VALUES (1);")},
	})
	const replicas = 4
	var wg sync.WaitGroup
	errs := make(chan error, replicas)
	start := make(chan struct{})
	for range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			db, err := Open(ctx, Options{DSN: dsn, migrations: fsys})
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a replica failed to start: %v", err)
		}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var versions, onceRows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM once").Scan(&onceRows); err != nil {
		t.Fatal(err)
	}
	if want := embeddedVersions() + 1; versions != want || onceRows != 1 {
		t.Fatalf("%d versions recorded and the migration's insert ran %d times; want %d and 1", versions, onceRows, want)
	}
}

// A failing migration leaves nothing behind: its transaction rolls back and
// it is not recorded, so a fixed binary applies it again.
func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	bad := withMigration(t, fstest.MapFS{
		nextMigration("bad"): {Data: []byte("CREATE TABLE half (x int);\nSELECT no_such_function();")},
	})
	if _, err := Open(ctx, Options{DSN: dsn, migrations: bad}); err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(nextMigration("bad"), ".sql")) {
		t.Fatalf("Open with a failing migration: %v; want an error naming it", err)
	}
	db := open(t, ctx, Options{DSN: dsn})
	var half bool
	if err := db.Pool().QueryRow(ctx, "SELECT to_regclass('half') IS NOT NULL").Scan(&half); err != nil || half {
		t.Fatalf("table of the failed migration exists: %v, %v", half, err)
	}
	if v, err := db.SchemaVersion(ctx); err != nil || v != embeddedVersions() {
		t.Fatalf("schema version %d, %v; want %d", v, err, embeddedVersions())
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	// A newer Herald migrated the database to a version this one lacks.
	newer := withMigration(t, fstest.MapFS{nextMigration("future"): {Data: []byte("CREATE TABLE future (x int);")}})
	db := open(t, ctx, Options{DSN: dsn, migrations: newer})
	db.Close()
	_, err := Open(ctx, Options{DSN: dsn})
	n := embeddedVersions()
	if !errors.Is(err, ErrSchemaNewer) || !strings.Contains(err.Error(), fmt.Sprintf("version %d, this binary knows up to %d", n+1, n)) {
		t.Fatalf("Open on a newer schema: %v; want ErrSchemaNewer naming both versions", err)
	}
}

func TestChangedMigrationRefused(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	open(t, ctx, Options{DSN: dsn}).Close()
	changed := withMigration(t, nil)
	f := changed.(fstest.MapFS)["0001_groundwork.sql"]
	f.Data = append(append([]byte(nil), f.Data...), "\n-- edited after release\n"...)
	_, err := Open(ctx, Options{DSN: dsn, migrations: changed})
	if err == nil || !strings.Contains(err.Error(), "0001_groundwork was changed after it was applied") {
		t.Fatalf("Open with an edited applied migration: %v", err)
	}
}

func TestOpenErrorsKeepTheDSNSecret(t *testing.T) {
	ctx := testCtx(t)
	for _, dsn := range []string{"postgres://herald:s3cretpw@[::1:5432/x", "host=/nonexistent-socket-dir user=herald password=s3cretpw connect_timeout=1"} {
		_, err := Open(ctx, Options{DSN: dsn})
		if err == nil || strings.Contains(err.Error(), "s3cretpw") {
			t.Fatalf("Open(%q): %v; want an error without the password", dsn, err)
		}
	}
}

// sqlstates collects the SQLSTATE of each retried error.
type sqlstates struct {
	mu    sync.Mutex
	codes []string
}

func (s *sqlstates) add(err error) {
	var pg *pgconn.PgError
	code := "not a PostgreSQL error: " + err.Error()
	if errors.As(err, &pg) {
		code = pg.Code
	}
	s.mu.Lock()
	s.codes = append(s.codes, code)
	s.mu.Unlock()
}

func (s *sqlstates) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.codes...)
}

// Write skew under SERIALIZABLE: both transactions read the sum of two rows,
// then each writes its own row from it. PostgreSQL fails one with 40001;
// inTx runs it again, and it then sees the other's write.
func TestInTxRetriesSerializationFailure(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL); INSERT INTO acct VALUES (1, 0), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	var read sync.WaitGroup
	read.Add(2)
	var retried sqlstates
	errs := make(chan error, 2)
	for _, id := range []int{1, 2} {
		go func() {
			first := true
			errs <- inTx(ctx, lazyPool{db.pool}, TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.Serializable}}, func(tx pgx.Tx) error {
				var sum int
				if err := tx.QueryRow(ctx, "SELECT sum(v) FROM acct").Scan(&sum); err != nil {
					return err
				}
				if first {
					// Both have read before either writes.
					first = false
					read.Done()
					read.Wait()
				}
				_, err := tx.Exec(ctx, "UPDATE acct SET v = $1 WHERE id = $2", sum+1, id)
				return err
			}, retried.add)
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("InTx surfaced %v", err)
		}
	}
	codes := retried.get()
	if len(codes) == 0 {
		t.Fatal("no transaction was retried: the test did not provoke a serialization failure")
	}
	for _, c := range codes {
		if c != sqlstateSerializationFailure {
			t.Fatalf("retried %q; want only %s", c, sqlstateSerializationFailure)
		}
	}
	var sum int
	if err := db.Pool().QueryRow(ctx, "SELECT sum(v) FROM acct").Scan(&sum); err != nil || sum != 3 {
		t.Fatalf("sum %d, %v; want 3 (1, then 2 by the retried transaction that saw it)", sum, err)
	}
}

// Two transactions locking two rows in opposite orders: PostgreSQL breaks
// the deadlock with 40P01 in one, which inTx runs again.
func TestInTxRetriesDeadlock(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE r (id int PRIMARY KEY, n int NOT NULL); INSERT INTO r VALUES (1, 0), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	var locked sync.WaitGroup
	locked.Add(2)
	var retried sqlstates
	errs := make(chan error, 2)
	for _, order := range [][2]int{{1, 2}, {2, 1}} {
		go func() {
			first := true
			errs <- inTx(ctx, lazyPool{db.pool}, TxOptions{}, func(tx pgx.Tx) error {
				// Detect the deadlock quickly (the test's superuser may).
				if _, err := tx.Exec(ctx, "SET LOCAL deadlock_timeout = '20ms'"); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "UPDATE r SET n = n + 1 WHERE id = $1", order[0]); err != nil {
					return err
				}
				if first {
					first = false
					locked.Done()
					locked.Wait()
				}
				_, err := tx.Exec(ctx, "UPDATE r SET n = n + 1 WHERE id = $1", order[1])
				return err
			}, retried.add)
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("InTx surfaced %v", err)
		}
	}
	// PostgreSQL usually aborts one of the two; when both detect the cycle
	// at once it may abort both, and each is then retried.
	codes := retried.get()
	if len(codes) == 0 || len(codes) > 2 {
		t.Fatalf("retried %v; want one or two %s", codes, sqlstateDeadlockDetected)
	}
	for _, c := range codes {
		if c != sqlstateDeadlockDetected {
			t.Fatalf("retried %v; want only %s", codes, sqlstateDeadlockDetected)
		}
	}
	var total int
	if err := db.Pool().QueryRow(ctx, "SELECT sum(n) FROM r").Scan(&total); err != nil || total != 4 {
		t.Fatalf("total %d, %v; want 4 (each transaction's two updates, once)", total, err)
	}
}

func TestInTxGivesUpWithErrContention(t *testing.T) {
	ctx := testCtx(t)
	db := open(t, ctx, Options{DSN: pgtest.DSN(t)})
	runs := 0
	err := db.InTx(ctx, TxOptions{MaxAttempts: 3}, func(pgx.Tx) error {
		runs++
		return &pgconn.PgError{Code: sqlstateSerializationFailure, Message: "could not serialize access"}
	})
	var pg *pgconn.PgError
	if !errors.Is(err, ErrContention) || errors.As(err, &pg) || runs != 3 {
		t.Fatalf("after %d runs: %v; want ErrContention (not PostgreSQL's error) after 3", runs, err)
	}
	// Other errors come back at once, as they are.
	mine := errors.New("mine")
	runs = 0
	if err := db.InTx(ctx, TxOptions{}, func(pgx.Tx) error { runs++; return mine }); err != mine || runs != 1 {
		t.Fatalf("after %d runs: %v; want %v after 1", runs, err, mine)
	}
	// The transaction of a failed run is rolled back.
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE w (x int)"); err != nil {
		t.Fatal(err)
	}
	_ = db.InTx(ctx, TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO w VALUES (1)"); err != nil {
			return err
		}
		return mine
	})
	var n int
	if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM w").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows after a failed transaction, %v", n, err)
	}
}

// Writers that all update one row, serialized on a name, all commit at
// SERIALIZABLE on two replicas, where without it they fail each other until
// their retries run out.
func TestSerializeOnLetsHotRowWritersCommit(t *testing.T) {
	ctx := testCtx(t)
	dsn := pgtest.DSN(t)
	a, b := open(t, ctx, Options{DSN: dsn}), open(t, ctx, Options{DSN: dsn})
	if _, err := a.Pool().Exec(ctx, `CREATE TABLE hot (one boolean PRIMARY KEY, n bigint NOT NULL); INSERT INTO hot VALUES (true, 0)`); err != nil {
		t.Fatal(err)
	}
	opts := TxOptions{TxOptions: pgx.TxOptions{IsoLevel: pgx.Serializable}, MaxAttempts: 3, SerializeOn: "test.hot"}
	const writers, each = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		db := a
		if w%2 == 1 {
			db = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				errs <- db.InTx(ctx, opts, func(tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, `SELECT n FROM hot`).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `UPDATE hot SET n = $1`, n+1)
					return err
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a serialized writer failed: %v", err)
		}
	}
	var n int64
	if err := a.Pool().QueryRow(ctx, `SELECT n FROM hot`).Scan(&n); err != nil || n != writers*each {
		t.Fatalf("n = %d, %v; want %d (no update lost)", n, err, writers*each)
	}
}
