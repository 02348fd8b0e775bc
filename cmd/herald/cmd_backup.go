package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
)

const backupUsage = `usage: herald backup DIR

  Copy data_dir into DIR (new or empty): a consistent snapshot of the
  database taken in one read transaction, with the signing keys, TLS
  material and every other file of data_dir. It works while Herald runs
  (the running server writes the copy, through data_dir/control.sock, and
  goes on serving) and when it is stopped.

  Restore: stop Herald, make DIR the data_dir (move it into place, owned by
  the server's user) and start Herald. See docs/operations.md.`

func init() { subcommands["backup"] = backupCommand }

// backupCommand copies data_dir consistently into a new directory.
func backupCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, backupUsage)
		return nil
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return usageError(backupUsage)
	}
	// The server resolves no relative path of ours: send an absolute one.
	dir, err := filepath.Abs(args[0])
	if err != nil {
		return err
	}
	// Run as root, the command (or the server) writes as data_dir's owner:
	// give that user the target directory first.
	if err := makeDirFor(cfg.DataDir, dir); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return live(ctx, cfg, log, control.Request{Args: []string{"backup", dir}}, stdout)
}

// backupOp runs `backup DIR` on an open App.
func backupOp(ctx context.Context, a *server.App, req control.Request, out io.Writer) error {
	if len(req.Args) != 2 || !filepath.IsAbs(req.Args[1]) {
		return usageError(backupUsage)
	}
	info, err := a.Backup(req.Args[1])
	if err := audited(a, req, "backup", req.Args[1], err); err != nil {
		return err
	}
	fmt.Fprintf(out, "backed up to %s in %s: database %d bytes (schema %d), %d other files, signing keys %s\n",
		info.Dir, info.Duration.Round(1e6), info.DBBytes, info.Schema, info.Files, strings.Join(info.KeyIDs, ", "))
	fmt.Fprintf(out, "restore: stop Herald, make %s its data_dir (owned by the server's user), start Herald\n", info.Dir)
	return nil
}
