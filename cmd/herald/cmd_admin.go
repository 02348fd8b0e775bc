package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/store"
)

const adminUsage = `usage: herald admin create USER [--replace] | delete USER | list | hash-password

  create USER     make an admin account for the console at /admin; the password
                  is read from standard input (one line) or asked for twice on a
                  terminal. --replace changes an existing account's password.
  delete USER     delete an account stored by create (and end its sessions)
  list            the accounts: stored ones and those from admin.users
  hash-password   print an argon2id hash of a password (read the same way) for
                  admin.users[].password_hash in the configuration file

create, delete and list work while Herald runs (through
data_dir/control.sock) and when it is stopped.`

// adminCommand manages console accounts.
func adminCommand(ctx context.Context, o runOptions, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(adminUsage)
	}
	switch args[0] {
	case "hash-password":
		if len(args) != 1 {
			return usageError(adminUsage)
		}
		pw, err := readPassword(o.stdin, os.Stderr)
		if err != nil {
			return err
		}
		h, err := admin.HashPassword(pw)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, h)
		return nil
	case "create":
		replace := false
		var rest []string
		for _, a := range args[1:] {
			if a == "--replace" || a == "-replace" {
				replace = true
			} else {
				rest = append(rest, a)
			}
		}
		if len(rest) != 1 {
			return usageError(adminUsage)
		}
		user := rest[0]
		if err := admin.ValidUsername(user); err != nil {
			return usageError(err.Error())
		}
		for _, u := range cfg.Admin.Users {
			if u.Username == user {
				return fmt.Errorf("admin: %q is defined in admin.users of the configuration; change it there", user)
			}
		}
		pw, err := readPassword(o.stdin, os.Stderr)
		if err != nil {
			return err
		}
		req := control.Request{Args: []string{"admin", "create", user}, Input: pw}
		if replace {
			req.Args = append(req.Args, "--replace")
		}
		err = live(ctx, cfg, log, req, stdout, nil)
		if errors.Is(err, store.ErrLocked) {
			// A Herald without a control socket holds the database: hand the
			// account over and wait for the server to say what it did with it.
			if err := admin.HandOver(cfg.DataDir, user, pw, replace); err != nil {
				return err
			}
			res, err := admin.AwaitHandover(cfg.DataDir, user, o.handoverWait)
			switch {
			case errors.Is(err, admin.ErrHandoverPending):
				log.Warn("the running Herald has not taken the account yet (is admin.enabled off?); it stays in data_dir/admin-accounts until it does", "user", user)
				fmt.Fprintf(stdout, "Herald is running: admin account %q handed over (%s); it is saved at the console's next login page or Herald's next start\n", user, admin.HandoverDir(cfg.DataDir))
				return nil
			case err != nil:
				return err
			case res.Exists:
				return fmt.Errorf("%w (use --replace to change its password)", admin.ErrUserExists)
			case !res.Saved:
				return fmt.Errorf("admin: the running Herald refused the account: %s", res.Error)
			}
			log.Info("admin account saved by the running server", "user", user)
			fmt.Fprintf(stdout, "admin account %q saved by the running Herald; log in at %s/admin\n", user, adminURL(cfg))
			return nil
		}
		return err
	case "delete":
		if len(args) != 2 {
			return usageError(adminUsage)
		}
	case "list":
		if len(args) != 1 {
			return usageError(adminUsage)
		}
	default:
		return usageError(adminUsage)
	}
	return live(ctx, cfg, log, control.Request{Args: append([]string{"admin"}, args...)}, stdout, nil)
}

// adminOp runs `admin create|delete|list` on an open App (create gets the
// password as req.Input).
func adminOp(ctx context.Context, a *server.App, req control.Request, out, stream io.Writer) error {
	args := req.Args[1:]
	cfg := a.Config()
	db := a.DB()
	if err := admin.Open(db); err != nil {
		return err
	}
	switch {
	case len(args) >= 2 && args[0] == "create":
		user, replace := args[1], len(args) == 3 && args[2] == "--replace"
		if err := admin.ValidUsername(user); err != nil {
			return usageError(err.Error())
		}
		err := admin.CreateUser(db, user, req.Input, replace, time.Now())
		if err := audited(a, req, "account.create", "account "+user, err); err != nil {
			if errors.Is(err, admin.ErrUserExists) {
				return fmt.Errorf("%w (use --replace to change its password)", err)
			}
			return err
		}
		fmt.Fprintf(out, "admin account %q saved; log in at %s/admin\n", user, adminURL(cfg))
		return nil
	case len(args) == 2 && args[0] == "delete":
		if err := audited(a, req, "account.delete", "account "+args[1], admin.DeleteUser(db, args[1])); err != nil {
			return err
		}
		fmt.Fprintf(out, "admin account %q deleted\n", args[1])
		return nil
	case len(args) == 1 && args[0] == "list":
		users, err := admin.Users(db)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tFROM\tCREATED")
		for _, u := range cfg.Admin.Users {
			fmt.Fprintf(tw, "%s\tconfig\t-\n", u.Username)
		}
		for _, u := range users {
			fmt.Fprintf(tw, "%s\tdatabase\t%s\n", u.Username, u.Created.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return usageError(adminUsage)
}

// adminURL is where the console is: admin.listen when set, else the public URL.
func adminURL(cfg *config.Config) string {
	if cfg.Admin.Listen != "" {
		scheme := "http"
		if cfg.TLS.Enabled() {
			scheme = "https"
		}
		return scheme + "://" + cfg.Admin.Listen
	}
	return cfg.BaseURL()
}

// readPassword reads one line from in. On a terminal it asks twice, with
// echo off, on prompt. golang.org/x/term does the terminal part on every
// platform Herald builds for (Linux, the BSDs, macOS, Windows).
func readPassword(in io.Reader, prompt io.Writer) (string, error) {
	if f, isFile := in.(*os.File); isFile && term.IsTerminal(int(f.Fd())) {
		first, err := readSecretLine(f, prompt, "Password: ")
		if err != nil {
			return "", err
		}
		again, err := readSecretLine(f, prompt, "Again: ")
		if err != nil {
			return "", err
		}
		if first != again {
			return "", errors.New("admin: the passwords differ")
		}
		return first, nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("admin: read the password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("admin: empty password")
	}
	return pw, nil
}

func readSecretLine(f *os.File, prompt io.Writer, label string) (string, error) {
	fmt.Fprint(prompt, label)
	defer fmt.Fprintln(prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("admin: empty password")
	}
	return string(b), nil
}
