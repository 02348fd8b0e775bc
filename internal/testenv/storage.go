package testenv

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/store"
)

// StorageVar names the test variable that picks the storage backend of
// every Env (and of the e2e binaries): "postgres" runs the whole stack on a
// fresh database of the throwaway PostgreSQL (internal/pgtest), anything
// else on bbolt. Like MATRIX_SPEC_DIR it lacks the HERALD_ prefix, which the
// built binary would read as configuration. .ci/run sets it for a second run
// of the HTTP and e2e packages:
//
//	TEST_STORAGE=postgres go test ./internal/server/ ./e2e/
//
// A package whose tests start an Env calls pgtest.Main from its TestMain, so
// the cluster is stopped at the end.
const StorageVar = "TEST_STORAGE"

// OnPostgres says whether StorageVar asks for PostgreSQL.
func OnPostgres() bool { return os.Getenv(StorageVar) == "postgres" }

// Postgres is a mutator for Start that runs the App on a fresh PostgreSQL
// database, whatever StorageVar says.
func Postgres(t testing.TB) func(*config.Config) {
	dsn := pgtest.DSN(t)
	return func(c *config.Config) {
		c.Storage.Backend, c.Storage.Postgres.DSN = config.StoragePostgres, config.Secret(dsn)
	}
}

// Bolt is a mutator for Start that runs the App on bbolt whatever
// StorageVar says: for a test of a feature only bbolt has (the backup
// snapshot, the clean-shutdown marker, herald check's page check, the
// keys-vs-database check, the old-layout conversions, the sydent import).
// Each such test says why next to it.
func Bolt(c *config.Config) {
	c.Storage.Backend, c.Storage.Postgres.DSN = config.StorageBolt, ""
}

// defaultStorage is the mutator StorageVar asks for (nil: bbolt).
func defaultStorage(t testing.TB) func(*config.Config) {
	if !OnPostgres() {
		return nil
	}
	return Postgres(t)
}

// StorageYAML is the top-level storage section a test's configuration file
// gets, for a binary started by an e2e test: empty on bbolt.
func StorageYAML(t testing.TB) string {
	if !OnPostgres() {
		return ""
	}
	return fmt.Sprintf("storage:\n  backend: postgres\n  postgres:\n    dsn: %q\n", pgtest.DSN(t))
}

// WaitFirstSweeps waits, on PostgreSQL, until the server's own first pass of
// each named periodic job (its periodic_jobs name: "invite-expiry",
// "session-sweep", ...) has ended. A job that never ran is due at once, and
// a replica runs its jobs one at a time, so on a loaded machine a first pass
// can come after a test has moved its clock, and do the work the test's own
// call of the same sweep was to do and count. On bbolt the first passes run
// at start without waiting on each other, and it returns at once.
func (e *Env) WaitFirstSweeps(t testing.TB, names ...string) {
	t.Helper()
	if e.App.DB().PG() == nil {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var done int
		err := e.App.DB().View(func(tx *store.Tx) error {
			return tx.PG.QueryRow(tx.Context(), `SELECT count(*) FROM periodic_jobs WHERE name = ANY($1) AND last_finished IS NOT NULL`, names).Scan(&done)
		})
		if err != nil {
			t.Fatalf("testenv: periodic_jobs: %v", err)
		}
		if done == len(names) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: the first pass of %v did not end within 30 s", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
