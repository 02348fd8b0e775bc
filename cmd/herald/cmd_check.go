package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

const checkUsage = `usage: herald check [DATA_DIR]

Verifies a data dir (data_dir from the configuration, or DATA_DIR, e.g. a
backup copy) without changing it:
  - herald.db: its meta pages and size, then bbolt's consistency check
    (every page reachable once, every key in order);
  - keys: every key file readable, its public half derived from its private
    half, and the keys the ones the database records it was used with.
It prints one line per finding and exits 0 when all is well, 1 otherwise.
Run it with Herald stopped (or on a copy): a running Herald holds the
database's lock.`

// errCheckFailed ends a check that found problems (exit 1); the findings
// are already on stdout.
var errCheckFailed = errors.New("check found problems (listed above)")

// checkCommand is `herald check`: see checkUsage.
func checkCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	dataDir := cfg.DataDir
	switch {
	case len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help"):
		fmt.Fprintln(stdout, checkUsage)
		return nil
	case len(args) == 1:
		dataDir = args[0]
	case len(args) > 1:
		return usageError(checkUsage)
	}
	if cfg.Storage.Backend == config.StoragePostgres {
		return errors.New("check: storage.backend is postgres: herald check verifies a bbolt data dir; PostgreSQL checks its own data (data_checksums, amcheck), and `herald migrate-storage` verifies a copy")
	}
	if st, err := os.Stat(dataDir); err != nil || !st.IsDir() {
		return fmt.Errorf("check: %s is not a directory", dataDir)
	}
	ok := true
	fail := func(format string, a ...any) {
		ok = false
		fmt.Fprintf(stdout, format+"\n", a...)
	}
	dbPath := filepath.Join(dataDir, store.FileName)
	keysDir := filepath.Join(dataDir, "keys")

	var issued []store.IssuedKey
	kept, dbOK := false, false
	if _, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) {
		fail("database %s: missing", dbPath)
	} else {
		rep, err := store.CheckFile(dbPath, nil)
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("check: %w: stop Herald, or check a copy of the data dir (herald check DIR)", err)
		}
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		if rep.Total > 0 {
			fail("database %s: damaged, %d problem(s):", dbPath, rep.Total)
			for _, p := range rep.Problems {
				fmt.Fprintf(stdout, "  %s\n", p)
			}
			if rep.Total > len(rep.Problems) {
				fmt.Fprintf(stdout, "  ... and %d more\n", rep.Total-len(rep.Problems))
			}
			fmt.Fprintln(stdout, "  restore data_dir (herald.db together with keys/) from a backup that `herald check` passes")
		} else {
			db, err := store.OpenReadOnly(dbPath, time.Second)
			if err != nil {
				return fmt.Errorf("check: %w", err)
			}
			v, verr := store.Version(db)
			issued, kept, err = store.IssuedKeys(db)
			db.Close()
			if err != nil || verr != nil {
				fail("database %s: unreadable record: %v", dbPath, errors.Join(err, verr))
			} else {
				dbOK = true
				fmt.Fprintf(stdout, "database %s: ok (consistent, schema version %d)\n", dbPath, v)
			}
		}
	}

	ring, err := keys.LoadRing(keysDir, cfg.ServerName)
	haveRing := err == nil
	switch {
	case err != nil && !errors.Is(err, keys.ErrNoRing):
		fail("keys %s: %s", keysDir, oneLine(err))
	case !dbOK:
		if haveRing {
			fmt.Fprintf(stdout, "keys %s: %d readable key(s); not compared with the database (see above)\n", keysDir, len(ring.IDs()))
		}
	default:
		var ids []string
		if haveRing {
			ids = ring.IDs()
		}
		if err := server.CompareKeys(dataDir, ids, haveRing, issued, kept); err != nil {
			fail("keys %s: %s", keysDir, oneLine(err))
		} else if !haveRing {
			fmt.Fprintf(stdout, "keys %s: none yet (a fresh data dir: `herald serve` makes the first)\n", keysDir)
		} else if !kept {
			fmt.Fprintf(stdout, "keys %s: ok (%s); the database (from Herald 0.1) records them at the next start\n", keysDir, strings.Join(ids, ", "))
		} else {
			fmt.Fprintf(stdout, "keys %s: ok (%s; they match the database's record)\n", keysDir, strings.Join(ids, ", "))
		}
	}
	if !ok {
		return errCheckFailed
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
