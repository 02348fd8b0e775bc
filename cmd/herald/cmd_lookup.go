package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
)

const lookupUsage = `usage: herald lookup rotate-pepper

  rotate-pepper   replace the hashed-lookup pepper now (lookup.pepper_rotation
                  also rotates it on a schedule) and rebuild the hash index;
                  lookups with the old pepper get M_INVALID_PEPPER, with the
                  new pepper in the error, until clients ask /hash_details again

Works while Herald runs (through data_dir/control.sock) and when it is stopped.`

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
		return live(ctx, cfg, log, control.Request{Args: []string{"lookup", "rotate-pepper"}}, stdout, nil)
	}
	return usageError(lookupUsage)
}

// lookupOp runs `lookup rotate-pepper` on an open App.
func lookupOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	if len(req.Args) != 2 || req.Args[1] != "rotate-pepper" {
		return usageError(lookupUsage)
	}
	id := a.Identity()
	_, prev, err := id.Pepper()
	if err != nil {
		return err
	}
	if err := audited(a, req, "pepper.rotate", "", id.RotatePepper()); err != nil {
		return err
	}
	_, created, err := id.Pepper()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lookup pepper rotated at %s (the previous one dated from %s)\n",
		created.UTC().Format(time.RFC3339), prev.UTC().Format(time.RFC3339))
	return nil
}
