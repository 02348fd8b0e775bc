package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/sydent"
)

const importUsage = `usage: herald import sydent --db sydent.db --sydent-config sydent.conf [--templates DIR]
                            [--merge] [--invite-expiry D]

  Imports a sydent deployment into Herald's data_dir: sydent's signing key
  (kept valid, not current), bindings, pending invites and their ephemeral
  keys, lookup pepper, access tokens and accepted terms. Everything goes in
  one database transaction: an interrupted or failed import writes nothing,
  and running it again is safe (a second run changes nothing).

  --db FILE             sydent's SQLite database (db.file in sydent.conf)
  --sydent-config FILE  sydent's config file (holds its signing key)
  --templates DIR       sydent's templates (templates.path): converted into
                        email.templates_dir (must be set) for every brand
  --merge               import into a data_dir that already holds Herald data
  --invite-expiry D     how long imported pending invites stay pending, from
                        the import (default invites.expiry; 0: never, as in
                        sydent)

Stop Herald (and sydent) first. See docs/migrating-from-sydent.md.`

// importCommand imports another identity server's deployment.
func importCommand(ctx context.Context, cfg *config.Config, _ *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(importUsage)
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, importUsage)
		return nil
	case "sydent":
	default:
		return usageError(importUsage)
	}
	fs := flag.NewFlagSet("import sydent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dbPath := fs.String("db", "", "")
	confPath := fs.String("sydent-config", "", "")
	templates := fs.String("templates", "", "")
	merge := fs.Bool("merge", false, "")
	expiry := fs.String("invite-expiry", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error() + "\n" + importUsage)
	}
	if *dbPath == "" || *confPath == "" || fs.NArg() > 0 {
		return usageError(importUsage)
	}
	scfg, err := sydent.ReadConfig(*confPath)
	if err != nil {
		return err
	}
	if *templates != "" && cfg.Email.TemplatesDir == "" {
		return errors.New("--templates needs email.templates_dir set: the converted templates are written there")
	}
	// The App is only storage here: its start-up notices (dev mailbox, admin
	// account) say nothing about the import, so only errors are logged.
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	// Nor does it send mail: the email templates are not loaded, so templates
	// still in sydent's syntax (which Herald refuses at start-up) do not stop
	// the import that converts them.
	storage := *cfg
	storage.Email.TemplatesDir, storage.Email.DefaultBrand = "", ""
	a, err := server.New(&storage, quiet, server.Options{Version: fullVersion()})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w: stop Herald first", err)
	} else if err != nil {
		return err
	}
	defer a.Close()
	opts := sydent.Options{Merge: *merge, InviteExpiry: cfg.Invites.Expiry.D()}
	if *expiry != "" {
		d, err := config.ParseDuration(*expiry)
		if err != nil {
			return usageError(fmt.Sprintf("--invite-expiry %q: want a duration such as 30d, or 0 for never", *expiry))
		}
		opts.InviteExpiry = d.D()
	}
	var p *progressLine
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p = &progressLine{w: stdout, start: time.Now()}
		opts.Progress = p.show
	}
	r, err := sydent.Import(ctx, sydent.Target{DB: a.DB(), Identity: a.Identity(), Invites: a.Invites(),
		Ring: a.Ring(), Ephemeral: a.Ephemeral()}, *dbPath, scfg, opts)
	if p != nil {
		p.clear()
	}
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, r.String())
	if !r.Changed() {
		fmt.Fprintln(stdout, "nothing changed: this deployment was imported before")
	}
	if *templates == "" {
		return nil
	}
	conv, err := sydent.ConvertTemplates(*templates, cfg.Email.TemplatesDir, scfg)
	if conv != nil {
		fmt.Fprint(stdout, conv.String())
	}
	return err
}

// progressLine redraws one terminal line with counts and an ETA.
type progressLine struct {
	w     io.Writer
	start time.Time
	width int
}

func (p *progressLine) show(pr sydent.Progress) {
	line := fmt.Sprintf("importing %s: %d/%d rows", pr.Stage, pr.Done, pr.Total)
	if el := time.Since(p.start); pr.Done > 0 && pr.Total > pr.Done {
		eta := time.Duration(float64(el) / float64(pr.Done) * float64(pr.Total-pr.Done))
		line += fmt.Sprintf(" (%d%%, about %s left)", pr.Done*100/pr.Total, eta.Round(time.Second))
	}
	pad := ""
	if n := p.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
}

func (p *progressLine) clear() {
	if p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
	}
}
