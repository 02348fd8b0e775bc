package server

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// ErrKeysMismatch means data_dir/keys and herald.db do not belong together:
// keys the database was used with are gone, or the database is not the one
// the keys were used with. Serving anyway would orphan every stored invite
// (signed under keys no longer published) or every key's invites (in a
// database no longer there), so start-up stops.
var ErrKeysMismatch = errors.New("signing keys and database disagree")

// adoptHint is how an operator deliberately accepts the loss.
const adoptHint = "`herald keys adopt` (Herald stopped)"

// CompareKeys checks the key ids in data_dir/keys (ringIDs; haveRing false
// when there is no ring.json) against the ids herald.db records (issued;
// kept false for a database made by Herald 0.1, which kept no record). It
// returns nil when they belong together, else an error wrapping
// ErrKeysMismatch, one line, saying what is missing and how to recover.
func CompareKeys(dataDir string, ringIDs []string, haveRing bool, issued []store.IssuedKey, kept bool) error {
	var expected, missing []string
	for _, k := range issued {
		if !k.Lost.IsZero() {
			continue
		}
		expected = append(expected, k.ID)
		if !slices.Contains(ringIDs, k.ID) {
			missing = append(missing, k.ID)
		}
	}
	keysDir := filepath.Join(dataDir, "keys")
	dbPath := filepath.Join(dataDir, store.FileName)
	switch {
	case !haveRing && kept && len(expected) == 0:
		return nil // a fresh data dir
	case !haveRing && !kept:
		return fmt.Errorf("%w: %s was used with signing keys but %s holds none (no ring.json): restore %s from the backup taken with the database, or give up the old keys with %s (invites signed under them stop validating)", ErrKeysMismatch, dbPath, keysDir, keysDir, adoptHint)
	case !kept:
		return nil // Herald 0.1's database: it adopts the keys next to it
	case len(missing) > 0 && !haveRing:
		return fmt.Errorf("%w: %s records signing keys %s but %s holds none (no ring.json): restore %s from the backup taken with the database, or give those keys up with %s (invites signed under them stop validating)", ErrKeysMismatch, dbPath, strings.Join(missing, ", "), keysDir, keysDir, adoptHint)
	case len(missing) > 0:
		return fmt.Errorf("%w: %s records signing keys %s that %s does not hold: restore %s from the backup taken with the database, or give those keys up with %s (invites signed under them stop validating)", ErrKeysMismatch, dbPath, strings.Join(missing, ", "), keysDir, keysDir, adoptHint)
	case len(expected) == 0 && haveRing:
		return fmt.Errorf("%w: %s holds signing keys %s but %s records none: the database was deleted, emptied or replaced; restore %s from the backup taken with these keys, or start with an empty database on these keys with %s", ErrKeysMismatch, keysDir, strings.Join(ringIDs, ", "), dbPath, dbPath, adoptHint)
	}
	return nil
}

// openKeys loads data_dir/keys, checks it against the key ids db records
// (refusing a mismatch), generates the first key of a fresh data dir, and
// records in db every key id of the ring, now and whenever the ring is
// reloaded, before the key signs anything.
func openKeys(cfg *config.Config, db *store.DB, log *slog.Logger) (*keys.Ring, error) {
	dir := filepath.Join(cfg.DataDir, "keys")
	issued, kept, err := store.IssuedKeys(db.Bolt())
	if err != nil {
		return nil, err
	}
	ring, err := keys.LoadRing(dir, cfg.ServerName)
	haveRing := err == nil
	if err != nil && !errors.Is(err, keys.ErrNoRing) {
		return nil, err
	}
	var ids []string
	if haveRing {
		ids = ring.IDs()
	}
	if err := CompareKeys(cfg.DataDir, ids, haveRing, issued, kept); err != nil {
		return nil, err
	}
	if !haveRing {
		if ring, err = keys.OpenRing(dir, cfg.ServerName); err != nil {
			return nil, err
		}
		log.Info("generated the first signing key", "key", ring.Current().ID)
	} else if !kept {
		log.Info("recording the signing keys in the database (first start of a data dir from Herald 0.1)", "keys", strings.Join(ring.IDs(), ","))
	}
	if err := store.RecordKeys(db.Bolt(), ring.IDs()...); err != nil {
		return nil, fmt.Errorf("recording signing key ids: %w", err)
	}
	ring.SetRecorder(func(ids []string) error { return store.RecordKeys(db.Bolt(), ids...) })
	return ring, nil
}
