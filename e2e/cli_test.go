package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cli runs the built binary with the test's config: `herald ARGS...`,
// stdin as its standard input. It returns standard output and the error
// (with standard error in it).
func (h *herald) cli(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(h.bin, append([]string{"-config", h.config}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = &cliError{err: err, stderr: errOut.String()}
	}
	return out.String(), err
}

type cliError struct {
	err    error
	stderr string
}

func (e *cliError) Error() string { return e.err.Error() + ": " + e.stderr }

func (h *herald) mustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := h.cli(t, stdin, args...)
	if err != nil {
		t.Fatalf("herald %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// dataDir is the data_dir newBinary configured.
func (h *herald) dataDir() string { return filepath.Join(filepath.Dir(h.config), "data") }

// keyIDs reads the key ids from `herald keys list`, newest first.
func keyIDs(out string) []string {
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "ed25519:") {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// Every data-changing command works against the running binary, through its
// control socket, and takes effect at once (no restart, no reload wait);
// after Herald stops, the same commands work on the data dir directly.
func TestCLIOnRunningServer(t *testing.T) {
	h, _, inviterHS, _ := newBinary(t, "", fmt.Sprintf("admin:\n  api_tokens: [%q]\n", crashAdminToken))
	t.Cleanup(func() {
		h.stop(t)
		if t.Failed() {
			t.Logf("herald output:\n%s", h.out.String())
		}
	})
	h.start(t)

	status, body := h.do(t, "POST", "/_matrix/identity/v2/account/register", map[string]any{
		"access_token": inviterHS.AddUser(alice), "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600,
	}, "")
	var reg struct{ Token string }
	if err := json.Unmarshal(body, &reg); status != 200 || err != nil {
		t.Fatalf("register: %d %s", status, body)
	}
	var tokens []string
	for _, addr := range []string{"zoe@example.org", "yan@example.org"} {
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": addr, "room_id": "!garden:hs.test", "sender": alice,
		}, reg.Token)
		var ans struct{ Token string }
		if err := json.Unmarshal(body, &ans); status != 200 || err != nil {
			t.Fatalf("store-invite: %d %s", status, body)
		}
		tokens = append(tokens, ans.Token)
	}

	sock := filepath.Join(h.dataDir(), "control.sock")
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v", st, err)
	}

	// invites list|show|revoke
	out := h.mustCLI(t, "", "invites", "list")
	if !strings.Contains(out, "zoe@example.org") || !strings.Contains(out, "yan@example.org") || strings.Count(out, "pending") != 2 {
		t.Fatalf("invites list:\n%s", out)
	}
	if out := h.mustCLI(t, "", "invites", "list", "--address", "ZOE@example.org"); !strings.Contains(out, "zoe@example.org") || strings.Contains(out, "yan@") {
		t.Fatalf("invites list --address:\n%s", out)
	}
	if out := h.mustCLI(t, "", "invites", "list", "--room", "!other:hs.test"); strings.Contains(out, "@example.org") {
		t.Fatalf("invites list --room of another room:\n%s", out)
	}
	if out := h.mustCLI(t, "", "invites", "show", "1"); !strings.Contains(out, "!garden:hs.test") || !strings.Contains(out, "zoe@example.org") || strings.Contains(out, tokens[0]) {
		t.Fatalf("invites show 1 (must not show the token):\n%s", out)
	}
	if out := h.mustCLI(t, "", "invites", "revoke", "1"); !strings.Contains(out, "invite 1 revoked") {
		t.Fatalf("invites revoke: %s", out)
	}
	if out := h.mustCLI(t, "", "invites", "list", "--state", "revoked"); !strings.Contains(out, "zoe@example.org") || strings.Contains(out, "yan@") {
		t.Fatalf("invites list --state revoked:\n%s", out)
	}
	// The running server knows at once: signing the revoked invite fails.
	status, body = h.do(t, "POST", "/_matrix/identity/v2/sign-ed25519", map[string]any{
		"mxid": "@zoe:hs.test", "token": tokens[0], "private_key": "x"}, reg.Token)
	if status == 200 {
		t.Fatalf("sign-ed25519 of a revoked invite: %d %s", status, body)
	}
	if _, err := h.cli(t, "", "invites", "revoke", "99"); err == nil || !strings.Contains(err.Error(), "no invite 99") {
		t.Fatalf("revoke unknown: %v", err)
	}
	if _, err := h.cli(t, "", "invites", "list", "--state", "bogus"); err == nil || !strings.Contains(err.Error(), "exit status 2") {
		t.Fatalf("bad state: %v", err)
	}

	// keys rotate|retire apply to the running server immediately.
	old := keyIDs(h.mustCLI(t, "", "keys", "list"))
	if len(old) != 1 {
		t.Fatalf("keys before rotate: %v", old)
	}
	h.mustCLI(t, "", "keys", "rotate")
	ids := keyIDs(h.mustCLI(t, "", "keys", "list"))
	if len(ids) != 2 || ids[1] != old[0] {
		t.Fatalf("keys after rotate: %v", ids)
	}
	if status, body := h.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(ids[0]), nil, ""); status != 200 {
		t.Fatalf("new key not served at once: %d %s", status, body)
	}
	status, body = h.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(old[0]), nil, "")
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal(body, &pk); status != 200 || err != nil {
		t.Fatalf("old key: %d %s", status, body)
	}
	h.mustCLI(t, "", "keys", "retire", old[0])
	status, body = h.do(t, "GET", "/_matrix/identity/v2/pubkey/isvalid?public_key="+url.QueryEscape(pk.PublicKey), nil, "")
	if status != 200 || !strings.Contains(string(body), `"valid":false`) {
		t.Fatalf("retired key still valid at once: %d %s", status, body)
	}

	// lookup rotate-pepper changes the pepper the server hands out.
	pepper := func() string {
		status, body := h.do(t, "GET", "/_matrix/identity/v2/hash_details", nil, reg.Token)
		var hd struct {
			Pepper string `json:"lookup_pepper"`
		}
		if err := json.Unmarshal(body, &hd); status != 200 || err != nil {
			t.Fatalf("hash_details: %d %s", status, body)
		}
		return hd.Pepper
	}
	p1 := pepper()
	h.mustCLI(t, "", "lookup", "rotate-pepper")
	if p2 := pepper(); p2 == p1 {
		t.Fatal("pepper unchanged after rotate-pepper on the running server")
	}

	// admin create|list|delete
	if out := h.mustCLI(t, "a good long password\n", "admin", "create", "ops"); !strings.Contains(out, `"ops" saved`) {
		t.Fatalf("admin create: %s", out)
	}
	if out := h.mustCLI(t, "", "admin", "list"); !strings.Contains(out, "ops") {
		t.Fatalf("admin list: %s", out)
	}
	h.mustCLI(t, "", "admin", "delete", "ops")
	if out := h.mustCLI(t, "", "admin", "list"); strings.Contains(out, "ops") {
		t.Fatalf("admin list after delete: %s", out)
	}
	waitFor(t, "the server to log the commands it ran", func() bool {
		return strings.Count(h.out.String(), "control command") >= 15
	})
	// The console's audit log shows what the commands changed, and who ran them.
	var audit struct {
		Entries []struct {
			Who, Action, Target string
			OK                  bool
		}
	}
	h.admin(t, "/admin/api/audit", &audit)
	seen := map[string]bool{}
	for _, e := range audit.Entries {
		if strings.HasPrefix(e.Who, "cli:") {
			seen[fmt.Sprintf("%s %s %v", e.Action, e.Target, e.OK)] = true
		}
	}
	for _, want := range []string{"invite.revoke invite 1 true", "invite.revoke invite 99 false", "key.rotate " + ids[0] + " true",
		"key.retire " + old[0] + " true", "pepper.rotate  true", "account.create account ops true", "account.delete account ops true"} {
		if !seen[want] {
			t.Errorf("audit log lacks %q: %v", want, seen)
		}
	}

	// Stopped: the socket is gone and the commands open the data dir.
	h.stop(t)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind: %v", err)
	}
	if out := h.mustCLI(t, "", "invites", "list", "--state", "pending"); !strings.Contains(out, "yan@example.org") || strings.Contains(out, "zoe@") {
		t.Fatalf("invites list on the stopped data dir:\n%s", out)
	}
	h.mustCLI(t, "", "invites", "revoke", "2")
	if ids := keyIDs(h.mustCLI(t, "", "keys", "list")); len(ids) != 2 {
		t.Fatalf("keys list stopped: %v", ids)
	}
	// And Herald starts again on what the commands left.
	h.start(t)
	if out := h.mustCLI(t, "", "invites", "list", "--state", "revoked"); strings.Count(out, "@example.org") != 2 {
		t.Fatalf("after restart:\n%s", out)
	}

	// Killed, Herald leaves its socket file behind; the next start replaces
	// it and the commands reach the new server.
	h.kill(t)
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("no socket file after SIGKILL: %v", err)
	}
	if _, err := h.cli(t, "", "invites", "list"); err != nil {
		t.Fatalf("invites list with a stale socket and Herald stopped: %v", err)
	}
	before := strings.Count(h.out.String(), "control command")
	h.start(t)
	h.mustCLI(t, "", "keys", "list")
	// The server's log reaches h.out through a pipe: wait for the line.
	waitFor(t, "the restarted server to log the command", func() bool {
		return strings.Count(h.out.String(), "control command") == before+1
	})
}
