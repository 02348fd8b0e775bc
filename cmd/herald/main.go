// Command herald is a Matrix identity server for third-party (email) invites.
//
//	herald [--config FILE] [serve]          run the server (the default)
//	herald version                          print the version
//	herald [--config FILE] keys list        list signing keys
//	herald [--config FILE] keys rotate      make a new current signing key
//	herald [--config FILE] keys retire ID   stop publishing an old key
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
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// listening, when set (by tests), is told the address `serve` listens on.
var listening func(net.Addr)

func main() {
	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr); err != nil {
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

const usage = `usage: herald [--config FILE] [command]

commands:
  serve                 run the server (default)
  version               print the version
  keys list             list the signing keys
  keys rotate           make a new current signing key (old keys stay valid)
  keys retire KEY_ID    stop publishing an old signing key
  keys adopt            make the database go with the keys in data_dir/keys (stopped)
%s
The configuration file can also be given as HERALD_CONFIG; every key can be
overridden with HERALD_<KEY_PATH> (e.g. HERALD_SMTP_HOST). See docs/configuration.md.
`

// run is the whole program, so tests can run it in-process.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("herald", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, usage, extraUsage()) }
	configPath := fs.String("config", lookupEnv(environ, "HERALD_CONFIG"), "configuration file (YAML); also HERALD_CONFIG")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError(err.Error())
	}
	cmd, rest := "serve", fs.Args()
	if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	switch cmd {
	case "version", "--version":
		fmt.Fprintf(stdout, "herald %s (%s)\n", fullVersion(), runtime.Version())
		return nil
	case "help":
		fs.Usage()
		return nil
	}
	sub, ok := subcommands[cmd]
	if cmd != "serve" && !ok {
		fs.Usage()
		return usageError(fmt.Sprintf("unknown command %q", cmd))
	}
	cfg, err := config.Load(*configPath, environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	if cmd == "serve" {
		if len(rest) > 0 {
			return usageError(fmt.Sprintf("serve takes no arguments (got %q)", rest[0]))
		}
		return serve(ctx, cfg, log)
	}
	return sub(ctx, cfg, log, rest, stdout)
}

// command is a subcommand: `herald NAME args...`.
type command func(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error

// subcommands maps names to their implementations (cmd_<name>.go).
var subcommands = map[string]command{
	"keys": keysCommand,
}

// extraUsage lists the subcommands other files registered.
func extraUsage() string {
	var b strings.Builder
	for name := range subcommands {
		if name != "keys" {
			fmt.Fprintf(&b, "  %-21s see `herald %s help`\n", name+" ...", name)
		}
	}
	return b.String()
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a, err := server.New(cfg, log, server.Options{Version: fullVersion(), Listening: listening, Control: controlHandler})
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}

func fullVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return version
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
