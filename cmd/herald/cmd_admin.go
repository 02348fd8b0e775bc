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

	bolt "go.etcd.io/bbolt"
	"golang.org/x/term"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
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

create works while Herald runs: it hands the account (name and password
hash) to the running server through data_dir/admin-accounts. delete and
list open the database: stop Herald first.`

// handoverWait is how long `admin create` waits for a running Herald to
// take a handed-over account (it takes them every second).
var handoverWait = 10 * time.Second

// adminStdin is where passwords are read from (tests replace it).
var adminStdin io.Reader = os.Stdin

// adminCommand manages console accounts.
func adminCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError(adminUsage)
	}
	switch args[0] {
	case "hash-password":
		if len(args) != 1 {
			return usageError(adminUsage)
		}
		pw, err := readPassword(adminStdin, os.Stderr)
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
		pw, err := readPassword(adminStdin, os.Stderr)
		if err != nil {
			return err
		}
		db, err := store.Open(cfg.DataDir, time.Second)
		if errors.Is(err, store.ErrLocked) {
			// Herald is running and holds the database: hand the account
			// over and wait for the server to say what it did with it.
			if err := admin.HandOver(cfg.DataDir, user, pw, replace); err != nil {
				return err
			}
			res, err := admin.AwaitHandover(cfg.DataDir, user, handoverWait)
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
		if err != nil {
			return err
		}
		defer db.Close()
		if err := admin.CreateUser(db, user, pw, replace, time.Now()); err != nil {
			if errors.Is(err, admin.ErrUserExists) {
				return fmt.Errorf("%w (use --replace to change its password)", err)
			}
			return err
		}
		log.Info("admin account saved", "user", user)
		fmt.Fprintf(stdout, "admin account %q saved; log in at %s/admin\n", user, adminURL(cfg))
		return nil
	case "delete":
		if len(args) != 2 {
			return usageError(adminUsage)
		}
		db, err := openStopped(cfg)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := admin.DeleteUser(db, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "admin account %q deleted\n", args[1])
		return nil
	case "list":
		if len(args) != 1 {
			return usageError(adminUsage)
		}
		db, err := openStopped(cfg)
		if err != nil {
			return err
		}
		defer db.Close()
		users, err := admin.Users(db)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
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

// openStopped opens the database for delete and list, which need Herald stopped.
func openStopped(cfg *config.Config) (*bolt.DB, error) {
	db, err := store.Open(cfg.DataDir, 2*time.Second)
	if errors.Is(err, store.ErrLocked) {
		return nil, fmt.Errorf("%w: stop Herald first (only `herald admin create` works while it runs)", err)
	}
	return db, err
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
