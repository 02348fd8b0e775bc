package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/user"
	"strconv"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/store"
)

const invitesUsage = `usage: herald invites revoke ID

  revoke ID   withdraw a pending invite (or one resolved but not yet delivered):
              it is never delivered and its ephemeral key answers invalid

The command opens the database, so stop Herald first (or use the admin console).`

// invitesCommand manages stored invites.
func invitesCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "help" {
		if len(args) == 0 {
			return usageError(invitesUsage)
		}
		fmt.Fprintln(stdout, invitesUsage)
		return nil
	}
	switch args[0] {
	case "revoke":
		if len(args) != 2 {
			return usageError(invitesUsage)
		}
		id, err := strconv.ParseUint(args[1], 10, 64)
		if err != nil || id == 0 {
			return usageError(fmt.Sprintf("invite ID must be a positive number (got %q)", args[1]))
		}
		a, err := server.New(cfg, log, server.Options{Version: fullVersion()})
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w: stop Herald first, or revoke from the admin console", err)
		} else if err != nil {
			return err
		}
		defer a.Close()
		by := "cli"
		if u, err := user.Current(); err == nil {
			by = "cli:" + u.Username
		}
		if err := a.Invites().Revoke(id, by); err != nil {
			if errors.Is(err, invites.ErrNotFound) {
				return fmt.Errorf("no invite %d", id)
			}
			return err
		}
		fmt.Fprintf(stdout, "invite %d revoked\n", id)
		return nil
	default:
		return usageError(invitesUsage)
	}
}
