package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/store"
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
	// A result left from an earlier hand-over nobody waited for is stale.
	if err := os.Remove(resultPath(dataDir, username)); err != nil && !errors.Is(err, os.ErrNotExist) {
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
		h.writeResult(strings.TrimSuffix(name, ".json"), err)
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

// HandoverResult is what the running server did with a handed-over
// account: data_dir/admin-accounts/NAME.result, read by AwaitHandover.
type HandoverResult struct {
	Saved  bool   `json:"saved"`
	Exists bool   `json:"exists,omitempty"` // the account exists and replace was not asked for
	Error  string `json:"error,omitempty"`  // any other refusal
}

// ErrHandoverPending means no running server took the account in time.
var ErrHandoverPending = errors.New("admin: the running server has not taken the account yet")

func resultPath(dataDir, username string) string {
	return filepath.Join(HandoverDir(dataDir), username+".result")
}

// writeResult leaves the outcome of importing NAME.json for the command
// that handed it over. A failure to write is logged: the import stands.
func (h *Handler) writeResult(username string, err error) {
	if ValidUsername(username) != nil {
		return
	}
	r := HandoverResult{Saved: err == nil}
	switch {
	case errors.Is(err, ErrUserExists):
		r.Exists = true
	case err != nil:
		r.Error = err.Error()
	}
	raw, _ := json.Marshal(r)
	dir := HandoverDir(h.opts.Config.DataDir)
	tmp, werr := os.CreateTemp(dir, ".tmp-*")
	if werr == nil {
		_, werr = tmp.Write(raw)
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Rename(tmp.Name(), resultPath(h.opts.Config.DataDir, username))
		}
		os.Remove(tmp.Name())
	}
	if werr != nil {
		h.opts.Log.Warn("admin: cannot leave the hand-over result", "dir", dir, "err", werr)
	}
}

// WatchHandovers imports handed-over accounts every interval until ctx is
// done, so `herald admin create` learns the outcome while it waits.
func (h *Handler) WatchHandovers(ctx context.Context, every time.Duration) {
	background.Every(ctx, every, h.importHandovers)
}

// AwaitHandover waits up to timeout for the running server's result for
// username's hand-over, removes it and returns it; ErrHandoverPending if
// none came (the account file stays and is imported later).
func AwaitHandover(dataDir, username string, timeout time.Duration) (HandoverResult, error) {
	path := resultPath(dataDir, username)
	deadline := time.Now().Add(timeout)
	for {
		raw, err := os.ReadFile(path)
		if err == nil {
			os.Remove(path)
			var r HandoverResult
			if err := json.Unmarshal(raw, &r); err != nil {
				return HandoverResult{}, fmt.Errorf("admin: bad hand-over result %s: %w", path, err)
			}
			return r, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return HandoverResult{}, err
		}
		if time.Now().After(deadline) {
			return HandoverResult{}, ErrHandoverPending
		}
		time.Sleep(50 * time.Millisecond)
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
	st := storeFor(h.opts.DB)
	_ = h.opts.DB.View(func(tx *store.Tx) error {
		var err error
		found, err = st.hasUser(tx)
		return err
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
