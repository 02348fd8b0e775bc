package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// A running Herald holds bbolt's file lock, so `herald admin create` cannot
// open the database then. It hands the account over instead: a file in
// data_dir/admin-accounts holding the name and the argon2id hash (never the
// password), which the running console imports at its next login page or
// login attempt (and any Herald at start-up).

// HandoverDir is where `herald admin create` leaves accounts for a running Herald.
func HandoverDir(dataDir string) string { return filepath.Join(dataDir, "admin-accounts") }

type handover struct {
	Username     string `json:"username"`
	PasswordHash string `json:"password_hash"`
	Replace      bool   `json:"replace,omitempty"`
}

// HandOver hashes password and leaves the account for the Herald running on
// dataDir to import. With replace, an existing account's password changes.
func HandOver(dataDir, username, password string, replace bool) error {
	if err := ValidUsername(username); err != nil {
		return err
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	dir := HandoverDir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	raw, _ := json.Marshal(handover{Username: username, PasswordHash: hash, Replace: replace})
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// Renamed into place whole, so the server never reads half a file.
	return os.Rename(tmp.Name(), filepath.Join(dir, username+".json"))
}

// importHandovers stores the accounts left by `herald admin create` and
// removes their files. Errors are logged: a bad file never stops a login.
func (h *Handler) importHandovers() {
	dir := HandoverDir(h.opts.Config.DataDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			h.opts.Log.Warn("admin: cannot read handed-over accounts", "dir", dir, "err", err)
		}
		return
	}
	h.handoverMu.Lock()
	defer h.handoverMu.Unlock()
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		path := filepath.Join(dir, name)
		raw, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // imported by a concurrent call
		}
		err = h.importHandover(raw)
		switch {
		case err == nil:
			h.audit("cli", "account.create", "account "+strings.TrimSuffix(name, ".json"), "herald admin create, imported by the running server", true)
		case errors.Is(err, ErrUserExists):
			h.opts.Log.Warn("admin: handed-over account exists already; run herald admin create with --replace to change its password", "file", path)
		default:
			h.opts.Log.Warn("admin: handed-over account refused", "file", path, "err", err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.opts.Log.Warn("admin: cannot remove handed-over account file", "file", path, "err", err)
		}
	}
}

func (h *Handler) importHandover(raw []byte) error {
	var ho handover
	if err := json.Unmarshal(raw, &ho); err != nil {
		return fmt.Errorf("bad file: %w", err)
	}
	if err := ValidUsername(ho.Username); err != nil {
		return err
	}
	if err := CheckHash(ho.PasswordHash); err != nil {
		return err
	}
	if _, ok := h.cfgUsers[ho.Username]; ok {
		return fmt.Errorf("%q is defined in admin.users of the configuration", ho.Username)
	}
	return putUser(h.opts.DB, ho.Username, ho.PasswordHash, ho.Replace, h.opts.Now())
}

// hasAccount reports whether anyone can log in at all.
func (h *Handler) hasAccount() bool {
	if len(h.cfgUsers) > 0 {
		return true
	}
	found := false
	_ = h.opts.DB.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bktUsers).Cursor().First()
		found = k != nil
		return nil
	})
	return found
}

// NoAccountHint says how to make the first account; it is logged at
// start-up and shown on the login page while no account exists.
func NoAccountHint(dataDir string) string {
	return fmt.Sprintf("no admin account exists yet: run `herald admin create NAME` "+
		"(from a source checkout: `go run ./cmd/herald admin create NAME`) with the same configuration "+
		"(data_dir %s); it asks for a password and works while Herald runs", dataDir)
}
