package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer/smtptest"
)

// pubkeyOf is the public key /pubkey serves for id.
func (h *herald) pubkeyOf(t *testing.T, id string) string {
	t.Helper()
	status, body := h.do(t, "GET", "/_matrix/identity/v2/pubkey/"+url.PathEscape(id), nil, "")
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal(body, &pk); status != 200 || err != nil || pk.PublicKey == "" {
		t.Fatalf("pubkey %s: %d %s", id, status, body)
	}
	return pk.PublicKey
}

// consoleLogin posts the console's login form and returns the status.
func (h *herald) consoleLogin(t *testing.T, user, password string) int {
	t.Helper()
	resp, err := h.client.Get(h.url + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := loginCSRF.FindSubmatch(page)
	if m == nil || len(resp.Cookies()) != 1 {
		t.Fatalf("login page: %d %v", resp.StatusCode, resp.Cookies())
	}
	body := url.Values{"csrf": {string(m[1])}, "username": {user}, "password": {password}, "next": {"/admin"}}.Encode()
	req, _ := http.NewRequest(http.MethodPost, h.url+"/admin/login", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(resp.Cookies()[0])
	resp, err = h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// lookupOne resolves address with a plain-text v2 lookup and returns the
// mxid it is bound to ("" if none).
func (h *herald) lookupOne(t *testing.T, tok, address string) string {
	t.Helper()
	status, body := h.do(t, "GET", "/_matrix/identity/v2/hash_details", nil, tok)
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	if err := json.Unmarshal(body, &hd); status != 200 || err != nil {
		t.Fatalf("hash_details: %d %s", status, body)
	}
	status, body = h.do(t, "POST", "/_matrix/identity/v2/lookup", map[string]any{
		"addresses": []string{address + " email"}, "algorithm": "none", "pepper": hd.Pepper,
	}, tok)
	var ans struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := json.Unmarshal(body, &ans); status != 200 || err != nil {
		t.Fatalf("lookup: %d %s", status, body)
	}
	return ans.Mappings[address+" email"]
}

// TestMigrateThenServe makes a bbolt data_dir with the built binary (an
// account, invites pending and finished, bindings, an admin user, mail
// sent and mail still queued, an onbind delivery pending), stops it, runs
// `herald migrate-storage --to postgres` and serves the same data_dir's
// configuration on PostgreSQL: lookups find the bindings, the admin user
// logs in, /pubkey serves the same key, the queued mail and the pending
// delivery go out once, and the pending invite's token still resolves on
// bind, with its onbind signed by the same key.
func TestMigrateThenServe(t *testing.T) {
	c := newCluster(t, 1, "")
	c.bbolt = true
	c.reconfigure(t, "")
	h := c.replicas[0]
	h.start(t)

	atok := h.register(t, c.inviterHS, alice)
	storeInvite := func(address, room string) []byte {
		status, body := h.do(t, "POST", "/_matrix/identity/v2/store-invite", map[string]any{
			"medium": "email", "address": address, "room_id": room, "sender": alice, "room_name": "Migrated",
		}, atok)
		if status != 200 {
			t.Fatalf("store-invite: %d %s", status, body)
		}
		if _, err := c.sim.AddStoreInviteAnswer(room, alice, h.url, body); err != nil {
			t.Fatal(err)
		}
		return body
	}
	accepted := func(mxid string) int {
		n := 0
		for _, a := range c.sim.Accepted() {
			if a.MXID == mxid {
				n++
			}
		}
		return n
	}
	// bob's invite is resolved (bound, delivered); carol's is bound while
	// her homeserver is down (the delivery stays pending); dave's is
	// revoked; erin's stays pending; frank's mail stays queued.
	storeInvite("bob@example.org", "!bob:hs.test")
	storeInvite("carol@example.org", "!carol:hs.test")
	storeInvite("dave@example.org", "!dave:hs.test")
	erinAnswer := storeInvite("erin@example.org", "!erin:hs.test")
	for _, a := range []string{"bob", "carol", "dave", "erin"} {
		waitMail(t, c.smtp, a+"@example.org", "", 0)
	}
	bob, carol := "@bob:"+simName, "@carol:"+simName
	if err := c.bindAddress(t, h, 1, "bob@example.org", func([]byte) error { return nil }, bob); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob's onbind", func() bool { return accepted(bob) == 1 })
	c.sim.Down(true)
	if err := c.bindAddress(t, h, 2, "carol@example.org", func([]byte) error { return nil }, carol); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "failed onbind attempts", func() bool { return len(c.sim.Calls()) >= 2 })
	var list struct {
		Invites []struct {
			ID string `json:"id"`
		} `json:"invites"`
	}
	h.admin(t, "/admin/api/invites?q=dave%40example.org", &list)
	if len(list.Invites) != 1 {
		t.Fatalf("dave's invite: %+v", list)
	}
	req, _ := http.NewRequest("POST", h.url+"/admin/api/invites/"+list.Invites[0].ID+"/revoke", nil)
	req.Header.Set("Authorization", "Bearer "+crashAdminToken)
	if resp, err := h.client.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoke: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	c.smtp.Fail(smtptest.AtData, 451, -1)
	storeInvite("frank@example.org", "!frank:hs.test")
	waitFor(t, "frank's mail to be deferred", func() bool { return c.smtp.Commands(smtptest.AtData) >= 2 })
	h.mustCLI(t, "a good long password\n", "admin", "create", "ops")
	keyID := keyIDs(h.mustCLI(t, "", "keys", "list"))[0]
	pub := h.pubkeyOf(t, keyID)
	h.stop(t)
	mailsBefore := len(c.smtp.Messages())

	// Copy into PostgreSQL: a summary, exit 0.
	code, out, errOut := h.runBin(t, "migrate-storage", "--to", "postgres", "--dsn", c.dsn)
	if code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("migrate-storage: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("migrate-storage:\n%s", out)

	// Serve on PostgreSQL, everything healthy.
	c.bbolt = false
	c.reconfigure(t, "")
	c.smtp.Fail(smtptest.AtData, 0, 0)
	c.sim.Down(false)
	h.start(t)
	if got := h.pubkeyOf(t, keyID); got != pub {
		t.Fatalf("pubkey after the migration: %s, want %s", got, pub)
	}
	if got := h.lookupOne(t, atok, "bob@example.org"); got != bob {
		t.Fatalf("lookup bob after the migration: %q", got)
	}
	waitFor(t, "carol's pending delivery", func() bool { return accepted(carol) == 1 })
	waitFor(t, "frank's queued mail", func() bool {
		for _, m := range c.smtp.Messages()[mailsBefore:] {
			if strings.EqualFold(m.To[0], "frank@example.org") {
				return true
			}
		}
		return false
	})
	if got := h.lookupOne(t, atok, "carol@example.org"); got != carol {
		t.Fatalf("lookup carol after the migration: %q", got)
	}
	if status := h.consoleLogin(t, "ops", "a good long password"); status != http.StatusSeeOther {
		t.Fatalf("admin login after the migration: %d", status)
	}
	if status := h.consoleLogin(t, "ops", "not the password"); status == http.StatusSeeOther {
		t.Fatalf("admin login with a wrong password: %d", status)
	}
	// erin's pending invite: binding her address delivers it, with the
	// token store-invite gave on bbolt, signed by the same key.
	erin := "@erin:" + simName
	if err := c.bindAddress(t, h, 3, "erin@example.org", func([]byte) error { return nil }, erin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "erin's onbind", func() bool { return accepted(erin) == 1 })
	var ans struct{ Token string }
	_ = json.Unmarshal(erinAnswer, &ans)
	for _, a := range c.sim.Accepted() {
		if a.MXID == erin && a.Token != ans.Token {
			t.Fatalf("erin's onbind carried token %q, want %q", a.Token, ans.Token)
		}
	}
	// The onbind's signed object verifies with the key /pubkey served on
	// bbolt.
	pubRaw, err := keys.DecodeBase64(pub)
	if err != nil {
		t.Fatal(err)
	}
	verified := 0
	for _, call := range c.sim.Calls() {
		var req struct {
			Invites []struct {
				MXID   string          `json:"mxid"`
				Signed json.RawMessage `json:"signed"`
			} `json:"invites"`
		}
		if json.Unmarshal(call.Body, &req) != nil {
			continue
		}
		for _, inv := range req.Invites {
			if inv.MXID != erin {
				continue
			}
			var signed map[string]json.RawMessage
			if err := json.Unmarshal(inv.Signed, &signed); err != nil {
				t.Fatal(err)
			}
			if err := keys.VerifyJSON(signed, "herald.test", keyID, pubRaw); err != nil {
				t.Fatalf("erin's onbind signed object: %v", err)
			}
			verified++
		}
	}
	if verified == 0 {
		t.Fatalf("no onbind for erin carried a signed object")
	}
	h.stop(t)
	if accepted(bob) != 1 || accepted(carol) != 1 || accepted("@dave:"+simName) != 0 {
		t.Fatalf("accepted %+v", c.sim.Accepted())
	}
	frank := 0
	for _, m := range c.smtp.Messages() {
		if strings.EqualFold(m.To[0], "frank@example.org") {
			frank++
		}
	}
	if frank != 1 {
		t.Fatalf("frank's invite mailed %d times", frank)
	}
}

// TestInterruptedMigrateIsFinishedByRestart kills `herald migrate-storage`
// with SIGKILL in the middle of copying a populated data dir: serve refuses
// the unfinished copy, a second run without --restart refuses too, and
// --restart copies everything, after which serve starts.
func TestInterruptedMigrateIsFinishedByRestart(t *testing.T) {
	c := newCluster(t, 1, "")
	c.bbolt = true
	c.reconfigure(t, "")
	h := c.replicas[0]
	if code, out, errOut := h.runBin(t, "bench", "populate", "--invites", "20000", "--bindings", "20000", h.dataDir()); code != 0 {
		t.Fatalf("populate: %d %s%s", code, out, errOut)
	}

	// Kill the copy once the small parts are done and the bindings and
	// invites are being copied: a line per finished part comes on
	// standard output.
	cmd := exec.Command(h.bin, "-config", h.config, "migrate-storage", "--to", "postgres", "--dsn", c.dsn)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if strings.HasPrefix(sc.Text(), "mail:") {
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	var invites int
	c.query(t, `SELECT count(*) FROM invites`, &invites)
	t.Logf("killed after %q with %d invites copied", seen, invites)
	if invites >= 20000 {
		t.Fatalf("the copy finished before the kill")
	}

	c.bbolt = false
	c.reconfigure(t, "")
	code, _, errOut := h.runBin(t, "serve")
	if line := refusal(t, errOut); code == 0 || !strings.Contains(line, "unfinished `herald migrate-storage` copy") || !strings.Contains(line, "--restart") {
		t.Fatalf("serve on the unfinished copy: exit %d: %s", code, line)
	}
	c.bbolt = true
	c.reconfigure(t, "")
	code, out, errOut := h.runBin(t, "migrate-storage", "--to", "postgres", "--dsn", c.dsn)
	if code == 0 || !strings.Contains(errOut, "--restart") {
		t.Fatalf("migrate again without --restart: exit %d\n%s%s", code, out, errOut)
	}
	start := time.Now()
	code, out, errOut = h.runBin(t, "migrate-storage", "--to", "postgres", "--dsn", c.dsn, "--restart")
	if code != 0 || !strings.Contains(out, "verified") {
		t.Fatalf("migrate --restart: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("--restart copied in %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	c.query(t, `SELECT count(*) FROM invites`, &invites)
	if invites != 20000 {
		t.Fatalf("%d invites after --restart", invites)
	}
	c.bbolt = false
	c.reconfigure(t, "")
	h.start(t)
	if status, body := h.do(t, "GET", "/_herald/ready", nil, ""); status != 200 {
		t.Fatalf("ready: %d %s", status, body)
	}
	h.stop(t)
}
