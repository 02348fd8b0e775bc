package testenv_test

import (
	"os"
	"testing"

	"github.com/herald-im/herald/internal/pgtest"
)

// TestMain stops the throwaway PostgreSQL that TEST_STORAGE=postgres (or a
// test asking for testenv.Postgres) started.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
