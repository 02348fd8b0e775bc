package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

const lookupUsage = `usage: herald lookup rotate-pepper

  rotate-pepper   replace the hashed-lookup pepper now (lookup.pepper_rotation
                  also rotates it on a schedule) and rebuild the hash index;
                  lookups with the old pepper get M_INVALID_PEPPER, with the
                  new pepper in the error, until clients ask /hash_details again

The command opens the database, so stop Herald first.`

// lookupCommand manages hashed lookups.
func lookupCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(lookupUsage)
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, lookupUsage)
		return nil
	case "rotate-pepper":
		if len(args) != 1 {
			return usageError(lookupUsage)
		}
		a, err := server.New(cfg, log, server.Options{Version: fullVersion()})
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w: stop Herald first", err)
		} else if err != nil {
			return err
		}
		defer a.Close()
		id := a.Identity()
		_, prev, err := id.Pepper()
		if err != nil {
			return err
		}
		if err := id.RotatePepper(); err != nil {
			return err
		}
		_, created, err := id.Pepper()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "lookup pepper rotated at %s (the previous one dated from %s)\n",
			created.UTC().Format(time.RFC3339), prev.UTC().Format(time.RFC3339))
		return nil
	}
	return usageError(lookupUsage)
}
