// Command herald is a Matrix identity server for third-party (email) invites.
//
//	herald [serve] [--config FILE]     run the server (the default)
//	herald help                        list the commands (the table in main.go)
//	herald COMMAND --help              one command's usage
//
// The configuration file may also be named by HERALD_CONFIG; every key can be
// overridden by a HERALD_* environment variable (see docs/configuration.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// runOptions are what the program takes besides its arguments and
// environment. main passes the process's own (defaultRunOptions); tests pass
// theirs to runWith instead of changing package state, so they can run in
// parallel.
type runOptions struct {
	stdin        io.Reader                       // where `admin create` and `admin hash-password` read passwords
	buildInfo    func() (*debug.BuildInfo, bool) // what `herald version` reports
	handoverWait time.Duration                   // how long `admin create` waits for a running Herald to take an account
	server       server.Options                  // handed to server.New by `serve` (Version and Control are set there)
}

func defaultRunOptions() runOptions {
	return runOptions{stdin: os.Stdin, buildInfo: debug.ReadBuildInfo, handoverWait: 10 * time.Second}
}

func main() {
	ctx, stop := signalContext()
	defer stop()
	if err := runWith(ctx, defaultRunOptions(), os.Args[1:], os.Environ(), os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "herald:", oneLine(err))
		}
		stop()
		os.Exit(exitCode(err))
	}
}

// signalContext is done on SIGINT or SIGTERM: the server then shuts down
// gracefully (requests in flight finish, storage is closed).
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) || errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

// usageError is a mistake on the command line.
type usageError string

func (e usageError) Error() string { return string(e) }

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// command is a subcommand's implementation: `herald NAME args...`. args are
// what follows NAME once the global flags (--config, --help) are taken out;
// cfg is nil for a command marked noConfig.
type command func(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error

// commandWith is a command that also needs what runOptions carry.
type commandWith func(ctx context.Context, o runOptions, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error

// subcommand is one entry of the command table.
type subcommand struct {
	name     string      // herald NAME
	summary  string      // one line in `herald help`
	run      command     // the implementation, usually in cmd_<name>.go
	runWith  commandWith // instead of run, for a command that needs runOptions
	usage    string      // printed by `herald NAME --help` and `herald help NAME`; empty: the summary
	noConfig bool        // the command reads no configuration (run gets cfg == nil)
}

// subcommands is every `herald NAME`, in the order `herald help` lists them.
// A new command is one line here and its code in cmd_<name>.go. Every entry
// gets --config FILE and --help before or after its name, and `herald NAME
// help`, from run.
var subcommands = []subcommand{
	{name: "serve", summary: "run the server (the default)", runWith: serveCommand, usage: serveUsage},
	{name: "version", summary: "print the version and the VCS revision it was built from", runWith: versionCommand, noConfig: true},
	{name: "keys", summary: "signing keys: list, rotate, retire, adopt", run: keysCommand, usage: keysUsage},
	{name: "invites", summary: "stored invites: list, show, revoke", run: invitesCommand, usage: invitesUsage},
	{name: "queue", summary: "the outbox and onbind queues: stats, list, retry, drop", run: queueCommand, usage: queueUsage},
	{name: "lookup", summary: "hashed lookups: rotate-pepper", run: lookupCommand, usage: lookupUsage},
	{name: "admin", summary: "console accounts: create, delete, list, hash-password", runWith: adminCommand, usage: adminUsage},
	{name: "import", summary: "import sydent: take over a sydent deployment (Herald stopped)", run: importCommand, usage: importUsage},
	{name: "backup", summary: "a consistent copy of data_dir, while Herald runs", run: backupCommand, usage: backupUsage},
	{name: "migrate-storage", summary: "copy data_dir's bbolt database into an empty PostgreSQL database, verified (Herald stopped)", run: migrateCommand, usage: migrateUsage},
	{name: "check", summary: "verify a data dir: database consistency, keys against the database", run: checkCommand, usage: checkUsage},
	{name: "doctor", summary: "check a deployment: public URL, TLS, SMTP, a homeserver", run: doctorCommand, usage: doctorUsage},
	{name: "bench", summary: "benchmarks at scale: populate a data dir, run loads over HTTP", run: benchCommand, usage: benchUsage},
	{name: "healthcheck", summary: "exit 0 if the running server is ready, else 1 (for container HEALTHCHECKs)", run: healthcheckCommand, usage: healthcheckUsage},
}

func findCommand(name string) *subcommand {
	for i := range subcommands {
		if subcommands[i].name == name {
			return &subcommands[i]
		}
	}
	return nil
}

const usageFooter = `
Every command takes --config FILE (or HERALD_CONFIG), before or after its name;
every key can be overridden with HERALD_<KEY_PATH> (e.g. HERALD_SMTP_HOST).
See docs/configuration.md.
`

// mainUsage lists the command table.
func mainUsage() string {
	var b strings.Builder
	b.WriteString("usage: herald [command] [--config FILE] [args]\n\ncommands:\n")
	for _, c := range subcommands {
		fmt.Fprintf(&b, "  %-12s %s\n", c.name, c.summary)
	}
	b.WriteString("\n`herald COMMAND --help` (or `herald help COMMAND`) shows a command's usage.\n")
	b.WriteString(usageFooter)
	return b.String()
}

// commandUsage is one command's help text.
func commandUsage(c *subcommand) string {
	u := strings.TrimRight(c.usage, "\n")
	if u == "" {
		u = "usage: herald " + c.name + "\n\n  " + c.summary
	}
	if c.noConfig {
		return u + "\n"
	}
	return u + "\n" + usageFooter
}

// globalArgs takes --config FILE (also -config, --config=FILE) and -h/--help
// out of args wherever they appear, up to a "--" (after which everything is
// the command's). What is left is the command name and its own arguments.
func globalArgs(args []string, configPath string) (rest []string, config string, help bool, err error) {
	config = configPath
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if len(rest) > 0 {
				rest = append(rest, args[i:]...)
			} else {
				rest = append(rest, args[i+1:]...)
			}
			return rest, config, help, nil
		case a == "--config" || a == "-config":
			if i+1 >= len(args) {
				return nil, "", false, usageError(a + " needs a file name")
			}
			config = args[i+1]
			i++
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			_, config, _ = strings.Cut(a, "=")
		case a == "-h" || a == "--help" || a == "-help":
			help = true
		default:
			rest = append(rest, a)
		}
	}
	return rest, config, help, nil
}

// run is the whole program with the process's own runOptions.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	return runWith(ctx, defaultRunOptions(), args, environ, stdout, stderr)
}

// runWith is the whole program, so tests can run it in-process.
func runWith(ctx context.Context, o runOptions, args, environ []string, stdout, stderr io.Writer) error {
	rest, configPath, help, err := globalArgs(args, lookupEnv(environ, "HERALD_CONFIG"))
	if err != nil {
		fmt.Fprint(stderr, mainUsage())
		return err
	}
	name := "serve"
	if len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	} else if help {
		fmt.Fprint(stdout, mainUsage())
		return nil
	}
	switch name {
	case "help":
		if len(rest) == 0 {
			fmt.Fprint(stdout, mainUsage())
			return nil
		}
		c := findCommand(rest[0])
		if c == nil || len(rest) > 1 {
			fmt.Fprint(stderr, mainUsage())
			return usageError(fmt.Sprintf("unknown command %q", strings.Join(rest, " ")))
		}
		fmt.Fprint(stdout, commandUsage(c))
		return nil
	case "--version", "-version":
		name = "version"
	}
	c := findCommand(name)
	if c == nil {
		fmt.Fprint(stderr, mainUsage())
		if strings.HasPrefix(name, "-") {
			return usageError(fmt.Sprintf("unknown flag %q", name))
		}
		return usageError(fmt.Sprintf("unknown command %q", name))
	}
	if help || (len(rest) == 1 && rest[0] == "help") {
		fmt.Fprint(stdout, commandUsage(c))
		return nil
	}
	call := c.run
	if c.runWith != nil {
		call = func(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
			return c.runWith(ctx, o, cfg, log, args, stdout)
		}
	}
	if c.noConfig {
		return call(ctx, nil, slog.New(slog.NewTextHandler(stderr, nil)), rest, stdout)
	}
	cfg, err := config.Load(configPath, environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	return call(ctx, cfg, log, rest, stdout)
}

const serveUsage = `usage: herald [serve]

  serve   run the server until SIGINT or SIGTERM, which shut it down gracefully
          (requests in flight finish, storage is closed)`

func serveCommand(ctx context.Context, o runOptions, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return usageError(fmt.Sprintf("serve takes no arguments (got %q)", args[0]))
	}
	return serve(ctx, o.server, cfg, log)
}

func versionCommand(ctx context.Context, o runOptions, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return usageError(fmt.Sprintf("version takes no arguments (got %q)", args[0]))
	}
	fmt.Fprint(stdout, versionText(o.buildInfo()))
	return nil
}

// versionText is what `herald version` prints: the version, the VCS revision
// (with its commit time, and "modified" for a build from uncommitted changes)
// the database schema version it writes, and the Go toolchain and
// platform, from the build information the go
// command embeds (revisions are there when building inside a git checkout
// with -buildvcs=auto or true, the default outside GOFLAGS=-buildvcs=false).
func versionText(bi *debug.BuildInfo, ok bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "herald %s\n", versionFrom(version, bi, ok))
	rev, when, modified := vcsInfo(bi, ok)
	if rev == "" {
		b.WriteString("revision unknown (built without VCS information)\n")
	} else {
		fmt.Fprintf(&b, "revision %s", rev)
		if when != "" {
			fmt.Fprintf(&b, " (%s)", when)
		}
		if modified {
			b.WriteString(" modified")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "database schema %d\n", store.SchemaVersion)
	goVersion := runtime.Version()
	if ok && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	fmt.Fprintf(&b, "%s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	return b.String()
}

func vcsInfo(bi *debug.BuildInfo, ok bool) (rev, when string, modified bool) {
	if !ok {
		return "", "", false
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return rev, when, modified
}

// versionFrom is the version: linked, the value of -ldflags
// "-X main.version=..." when set (the Dockerfile does), else the module
// version (`go install ...@v1.2.3`), else "dev-" and the revision's first 12
// characters, else "dev".
func versionFrom(linked string, bi *debug.BuildInfo, ok bool) string {
	if linked != "dev" {
		return linked
	}
	if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	if rev, _, modified := vcsInfo(bi, ok); len(rev) >= 12 {
		if modified {
			return "dev-" + rev[:12] + "-modified"
		}
		return "dev-" + rev[:12]
	}
	return linked
}

func serve(ctx context.Context, opts server.Options, cfg *config.Config, log *slog.Logger) error {
	opts.Version, opts.Control = fullVersion(), controlHandler
	a, err := server.New(cfg, log, opts)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}

// fullVersion is the version the server reports (see versionFrom).
func fullVersion() string {
	bi, ok := debug.ReadBuildInfo()
	return versionFrom(version, bi, ok)
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
