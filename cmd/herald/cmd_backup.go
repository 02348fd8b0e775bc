package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
)

const backupUsage = `usage: herald backup DIR

  Copy data_dir into DIR (new or empty, outside data_dir): a consistent
  snapshot of the database taken in one read transaction, with the signing
  keys, TLS material and every other file of data_dir. It works while
  Herald runs (the running server sends the copy through
  data_dir/control.sock and goes on serving) and when it is stopped. The
  command writes DIR itself and checks the copy opens.

  Restore: stop Herald, make DIR the data_dir (move it into place, owned by
  the server's user) and start Herald. See docs/operations.md.`

// errBackupPostgres: the database is PostgreSQL's to back up.
var errBackupPostgres = errors.New("backup: storage.backend is postgres: back up the database with PostgreSQL's tools (pg_dump, or base backups with WAL archiving: docs/scaling.md), and data_dir's per-node files (TLS) with any file backup")

// backupCommand copies data_dir consistently into a new directory.
func backupCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, backupUsage)
		return nil
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return usageError(backupUsage)
	}
	if cfg.Storage.Backend == config.StoragePostgres {
		return errBackupPostgres
	}
	dir, err := server.CheckBackupTarget(cfg.DataDir, args[0])
	if err != nil {
		return err
	}
	// Run as root, the command writes as data_dir's owner: give that user
	// the target directory first.
	if err := makeDirFor(cfg.DataDir, dir); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	start := time.Now()
	var info server.BackupInfo
	err = live(ctx, cfg, log, control.Request{Args: []string{"backup", dir}}, stdout, func(r io.Reader) error {
		var err error
		info, err = server.ExtractBackup(r, dir, cfg.ServerName)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backed up to %s in %s: database %d bytes (schema %d), %d other files, signing keys %s\n",
		info.Dir, time.Since(start).Round(time.Millisecond), info.DBBytes, info.Schema, info.Files, strings.Join(info.KeyIDs, ", "))
	fmt.Fprintf(stdout, "restore: stop Herald, make %s its data_dir (owned by the server's user), start Herald\n", info.Dir)
	return nil
}

// backupOp streams a consistent copy of data_dir (App.WriteBackup); the
// command writes it into the directory.
func backupOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	// The directory is named for the audit log only: the command writes it.
	if len(req.Args) != 2 {
		return usageError(backupUsage)
	}
	return audited(a, req, "backup", req.Args[1], a.WriteBackup(stream))
}
