package loadgen_test

import (
	"os"
	"testing"

	"github.com/herald-im/herald/internal/pgtest"
)

// TestMain stops the throwaway PostgreSQL that TEST_STORAGE=postgres
// started for TestRunBench's Env.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
