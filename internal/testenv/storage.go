package testenv

import (
	"fmt"
	"os"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/pgtest"
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
