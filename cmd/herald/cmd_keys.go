package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/keys"
)

const keysUsage = `usage: herald keys list | rotate | retire KEY_ID

  list            every signing key: id, status, creation date, public key
  rotate          make a new current key; older keys stay published and valid
  retire KEY_ID   stop publishing an old key: isvalid answers false for it

Keys live in data_dir/keys. A running Herald picks changes up within 10 seconds.`

// keysCommand manages the long-term signing keys in data_dir/keys. It does
// not open the database, so it works while Herald is running.
func keysCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(keysUsage)
	}
	ring, err := keys.OpenRing(filepath.Join(cfg.DataDir, "keys"), cfg.ServerName)
	if err != nil {
		return err
	}
	switch args[0] {
	case "list":
		if len(args) != 1 {
			return usageError(keysUsage)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY ID\tSTATUS\tCREATED\tPUBLIC KEY")
		for _, k := range ring.List() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, keyStatus(k), k.Created.UTC().Format(time.RFC3339), k.PublicBase64())
		}
		return tw.Flush()
	case "rotate":
		if len(args) != 1 {
			return usageError(keysUsage)
		}
		prev := ring.Current()
		k, err := ring.Rotate()
		if err != nil {
			return err
		}
		log.Info("rotated signing key", "new", k.ID, "previous", prev.ID)
		fmt.Fprintf(stdout, "new current key %s (public key %s)\n%s stays valid until `herald keys retire %s`\n", k.ID, k.PublicBase64(), prev.ID, prev.ID)
		return nil
	case "retire":
		if len(args) != 2 {
			return usageError(keysUsage)
		}
		if err := ring.Retire(args[1]); err != nil {
			return err
		}
		log.Info("retired signing key", "key", args[1])
		fmt.Fprintf(stdout, "retired %s: it is no longer published or valid\n", args[1])
		return nil
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, keysUsage)
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
