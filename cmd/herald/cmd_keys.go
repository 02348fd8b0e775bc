package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

const keysUsage = `usage: herald keys list | rotate | retire KEY_ID | adopt

  list            every signing key: id, status, creation date, public key
  rotate          make a new current key; older keys stay published and valid
  retire KEY_ID   stop publishing an old key: isvalid answers false for it
  adopt           make the database and data_dir/keys belong together again
                  when Herald refuses to start because they disagree: keys
                  the database records but data_dir/keys lacks are given up
                  (invites signed under them stop validating), the keys in
                  data_dir/keys (a new one if there are none) are recorded.
                  A deliberate fresh start; restoring the backup is the
                  alternative. Herald must be stopped.

Keys live in data_dir/keys (with storage.backend: postgres, in the
database, shared by every replica; adopt does not apply there). The commands
work while Herald runs (through data_dir/control.sock: the change applies at
once, and other replicas follow within seconds) and when it is stopped.`

// keysCommand manages the long-term signing keys in data_dir/keys.
func keysCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(keysUsage)
	}
	if args[0] == "adopt" {
		if len(args) != 1 {
			return usageError(keysUsage)
		}
		if cfg.Storage.Backend == config.StoragePostgres {
			return errors.New("keys adopt: not needed with storage.backend: postgres: the keys live in the database with everything they signed")
		}
		return adoptKeys(cfg, log, stdout)
	}
	switch {
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		fmt.Fprintln(stdout, keysUsage)
		return nil
	case len(args) == 1 && (args[0] == "list" || args[0] == "rotate"),
		len(args) == 2 && args[0] == "retire":
		return live(ctx, cfg, log, control.Request{Args: append([]string{"keys"}, args...)}, stdout, nil)
	}
	return usageError(keysUsage)
}

// keysOp runs `keys list|rotate|retire` on an open App. Through the control
// socket the running server's ring changes at once.
func keysOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	args := req.Args[1:]
	ring := a.Ring()
	switch {
	case len(args) == 1 && args[0] == "list":
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY ID\tSTATUS\tCREATED\tPUBLIC KEY")
		for _, k := range ring.List() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, keyStatus(k), k.Created.UTC().Format(time.RFC3339), k.PublicBase64())
		}
		return tw.Flush()
	case len(args) == 1 && args[0] == "rotate":
		prev := ring.Current()
		k, err := ring.Rotate()
		if err := audited(a, req, "key.rotate", k.ID, err); err != nil {
			return err
		}
		fmt.Fprintf(out, "new current key %s (public key %s)\n%s stays valid until `herald keys retire %s`\n", k.ID, k.PublicBase64(), prev.ID, prev.ID)
		return nil
	case len(args) == 2 && args[0] == "retire":
		if err := audited(a, req, "key.retire", args[1], ring.Retire(args[1])); err != nil {
			return err
		}
		fmt.Fprintf(out, "retired %s: it is no longer published or valid\n", args[1])
		return nil
	}
	return usageError(keysUsage)
}

func keyStatus(k keys.Key) string {
	switch {
	case k.Current:
		return "current"
	case k.Valid():
		return "valid"
	}
	return "retired " + k.Retired.UTC().Format(time.RFC3339)
}

// adoptKeys is `herald keys adopt`: the operator's deliberate answer to
// "signing keys and database disagree". It marks every key the database
// records but data_dir/keys lacks as lost, and records the keys present
// (generating a first one if there are none), so the next start is accepted.
func adoptKeys(cfg *config.Config, log *slog.Logger, stdout io.Writer) error {
	db, err := store.Open(cfg.DataDir, 2*time.Second)
	if err != nil {
		return err
	}
	defer db.Close()
	dir := filepath.Join(cfg.DataDir, "keys")
	ring, err := keys.LoadRing(dir, cfg.ServerName)
	if errors.Is(err, keys.ErrNoRing) {
		if ring, err = keys.OpenRing(dir, cfg.ServerName); err == nil {
			fmt.Fprintf(stdout, "generated a new signing key %s\n", ring.Current().ID)
		}
	}
	if err != nil {
		return err
	}
	issued, _, err := store.IssuedKeys(db)
	if err != nil {
		return err
	}
	present := ring.IDs()
	var lost []string
	for _, k := range issued {
		if k.Lost.IsZero() && !slices.Contains(present, k.ID) {
			lost = append(lost, k.ID)
		}
	}
	if err := store.MarkKeysLost(db, lost...); err != nil {
		return err
	}
	if err := store.RecordKeys(db, present...); err != nil {
		return err
	}
	if len(lost) > 0 {
		log.Warn("signing keys given up", "keys", strings.Join(lost, ","))
		fmt.Fprintf(stdout, "gave up %s: invites signed under them no longer validate\n", strings.Join(lost, ", "))
	}
	fmt.Fprintf(stdout, "the database now goes with the signing keys %s\n", strings.Join(present, ", "))
	return nil
}
