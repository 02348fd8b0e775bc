package server_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

const adminToken = "admin-token-for-the-wiring-test-0123456789"

func adminCall(t *testing.T, e *testenv.Env, method, path, body string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(method, e.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if v != nil && res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return res.StatusCode
}

type inviteAnswer struct {
	Invite   invites.View    `json:"invite"`
	Timeline []invites.Event `json:"timeline"`
	Mails    []mailer.View   `json:"mails"`
}

// TestAdminWiring drives the console's API against the real services: an
// invite stored over the Matrix API shows up, its email is sent to the dev
// mailbox, it can be resent, revoked and erased.
func TestAdminWiring(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) {
		c.Admin.APITokens = []config.Secret{adminToken}
		c.Invites.ResendInterval = 0 // resend at once (invites.resend_interval is tested in invites)
	})
	tok := e.Register(t, "@alice:hs.test")
	e.AcceptTerms(t, tok)
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "Bob.Smith@Example.ORG", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
		"room_alias": "#tea:hs.test", "room_name": "Tea", "sender_display_name": "Alice", "room_join_rules": "invite",
	}, tok)
	if status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	// Found by the address as typed differently; emailed once the worker sent it.
	var list struct {
		Invites []invites.View `json:"invites"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code := adminCall(t, e, "GET", "/admin/api/invites?q=bob.smith@example.org", "", &list); code != 200 {
			t.Fatalf("list: %d", code)
		}
		if len(list.Invites) == 1 && list.Invites[0].State == invites.StateEmailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("invite never emailed: %+v", list.Invites)
		}
		time.Sleep(20 * time.Millisecond)
	}
	id := list.Invites[0].ID
	var inv inviteAnswer
	adminCall(t, e, "GET", "/admin/api/invites/"+id, "", &inv)
	kinds := []string{}
	for _, ev := range inv.Timeline {
		kinds = append(kinds, ev.Kind)
	}
	if got := strings.Join(kinds, ","); got != "created,email queued,email attempt" || !inv.Timeline[2].OK || inv.Invite.Fields["room_join_rules"] != "invite" {
		t.Fatalf("timeline %s %+v", got, inv.Timeline)
	}
	var dash struct {
		Invites []struct {
			State string `json:"state"`
			Count int    `json:"count"`
		} `json:"invites"`
		Outbox queue.StatsView    `json:"outbox"`
		PerDay []invites.DayCount `json:"per_day"`
	}
	adminCall(t, e, "GET", "/admin/api/dashboard", "", &dash)
	if dash.Invites[1].State != invites.StateEmailed || dash.Invites[1].Count != 1 || dash.Invites[0].Count != 0 || dash.Outbox.Done != 1 || dash.PerDay[29].Created != 1 {
		t.Fatalf("dashboard %+v", dash)
	}
	if code := adminCall(t, e, "POST", "/admin/api/invites/"+id+"/resend", "", nil); code != 200 {
		t.Fatalf("resend: %d", code)
	}
	// Revoke once the resent mail's attempt is recorded, so the timeline's
	// last entry is the revocation whenever the worker gets to the mail.
	deadline = time.Now().Add(10 * time.Second)
	for {
		adminCall(t, e, "GET", "/admin/api/invites/"+id, "", &inv)
		if len(inv.Mails) != 2 {
			t.Fatalf("%d mails after resend", len(inv.Mails))
		}
		if len(inv.Mails[0].Attempts) > 0 && len(inv.Mails[1].Attempts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resent mail was never attempted: %+v", inv.Mails)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := adminCall(t, e, "POST", "/admin/api/invites/"+id+"/revoke", "", nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	adminCall(t, e, "GET", "/admin/api/invites/"+id, "", &inv)
	if last := inv.Timeline[len(inv.Timeline)-1]; last.Kind != "revoked" || inv.Invite.State != invites.StateRevoked {
		t.Fatalf("timeline after revoke ends with %+v", last)
	}
	for path, want := range map[string]int{"/revoke": 409, "/resend": 409} {
		if code := adminCall(t, e, "POST", "/admin/api/invites/"+id+path, "", nil); code != want {
			t.Fatalf("%s after revoke: %d", path, code)
		}
	}
	if code := adminCall(t, e, "GET", "/admin/api/invites/999", "", nil); code != 404 {
		t.Fatalf("unknown invite: %d", code)
	}
	// The dev mailbox holds the rendered mails.
	var mb struct {
		Mails []mailer.DevMailView `json:"mails"`
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(mb.Mails) < 2 && time.Now().Before(deadline) {
		adminCall(t, e, "GET", "/admin/api/mailbox", "", &mb)
		time.Sleep(20 * time.Millisecond)
	}
	if len(mb.Mails) < 2 {
		t.Fatalf("mailbox %+v", mb)
	}
	var dm mailer.DevMailView
	adminCall(t, e, "GET", "/admin/api/mailbox/"+mb.Mails[0].ID, "", &dm)
	if !strings.Contains(dm.Subject, "Alice") || !strings.Contains(dm.HTML, "Tea") {
		t.Fatalf("dev mail %+v", dm)
	}
	// Erase everything about the address.
	var er admin.EraseResult
	if code := adminCall(t, e, "POST", "/admin/api/bindings/erase", `{"address":"bob.smith@example.org","confirm":"Bob.Smith@example.org"}`, &er); code != 200 || er.Invites != 1 || er.Mails != 2 {
		t.Fatalf("erase: %d %+v", code, er)
	}
	adminCall(t, e, "GET", "/admin/api/invites?q=bob.smith@example.org", "", &list)
	if len(list.Invites) != 0 {
		t.Fatal("invite survived erasure")
	}
	// Keys rotate in the running ring.
	before := e.App.Ring().Current().ID
	if code := adminCall(t, e, "POST", "/admin/api/keys/rotate", "", nil); code != 200 || e.App.Ring().Current().ID == before {
		t.Fatalf("rotate: %d", code)
	}
	// The console pages are served on the main listener.
	res, err := e.Client.Get(e.URL + "/admin/invites")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/admin/login") {
		t.Fatalf("console: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	if logs := e.Logs(); strings.Contains(strings.ToLower(logs), "bob.smith@example.org") {
		t.Fatal("an address was logged in clear")
	}
}

// TestAdminSeparateListener: with admin.listen the console is served there,
// and not on the public listener.
func TestAdminSeparateListener(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	var logs testenv.SyncBuffer
	public, stop := serveApp(t, &cfg, &logs)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	re := regexp.MustCompile(`admin console listening"? addr=(\S+)`)
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("no admin listener in logs: %s", logs.String())
	}
	res, err := http.Get("http://" + addr + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "Log in") {
		t.Fatalf("admin listener: %d", res.StatusCode)
	}
	res, err = http.Get("http://" + public + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("console on the public listener: %d", res.StatusCode)
	}
}

// TestAdminEraseLeavesNothing: erasing an address from the console removes
// every trace of it, down to the bytes of the bbolt file and the files in
// data_dir: invite and ephemeral key, binding and lookup hash, validation
// session, outbox mails with their attempts, dev mailbox files, deliveries.
// The audit log keeps only the redacted form.
func TestAdminEraseLeavesNothing(t *testing.T) {
	t.Parallel()
	const typed, addr, local = "Erin.Example@Example.ORG", "erin.example@example.org", "erin.example"
	e := testenv.Start(t, func(c *config.Config) {
		c.Admin.APITokens = []config.Secret{adminToken}
		c.Delivery.MinBackoff = config.Duration(time.Hour) // one delivery attempt, then quiet
		c.Delivery.MaxBackoff = config.Duration(time.Hour)
	})
	tok := e.Register(t, "@alice:hs.test")
	e.AcceptTerms(t, tok)
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": typed, "room_id": "!room:hs.test", "sender": "@alice:hs.test", "room_name": "Tea",
	}, tok)
	if status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	var stored struct {
		PublicKeys []struct {
			PublicKey string `json:"public_key"`
		} `json:"public_keys"`
	}
	if err := json.Unmarshal(raw, &stored); err != nil || len(stored.PublicKeys) != 2 {
		t.Fatalf("store-invite answer %s", raw)
	}
	ephemeral := stored.PublicKeys[1].PublicKey
	// Someone else's invite must survive.
	if status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "frank@example.org", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
	}, tok); status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	// A validation session (and its mail), as typed.
	if status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/validate/email/requestToken", map[string]any{
		"client_secret": "secret-123", "email": typed, "send_attempt": 1,
	}, tok); status != http.StatusOK {
		t.Fatalf("requestToken: %d %s", status, raw)
	}
	// A binding: the invite resolves and an onbind delivery is queued.
	now := time.Now().UTC()
	err := e.App.DB().Update(func(tx *store.Tx) error {
		return e.App.Identity().PutBinding(tx, identity.Binding{Medium: "email", Address: addr, MXID: "@someone:hs.test", NotBefore: now, NotAfter: now.Add(time.Hour), TS: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	pepper, _, err := e.App.Identity().Pepper()
	if err != nil {
		t.Fatal(err)
	}
	hash := identity.LookupHash(addr, "email", pepper)
	if m, err := e.App.Identity().LookupHashed("sha256", pepper, []string{hash}); err != nil || m[hash] != "@someone:hs.test" {
		t.Fatalf("lookup before erasure: %v %v", m, err)
	}
	// Wait for the three mails in the dev mailbox and one delivery attempt.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mails, _ := e.App.Mailbox().List()
		dels, _, _ := e.App.Deliveries().List(invites.DeliveryFilter{Limit: 10})
		if len(mails) == 3 && len(dels) == 1 && len(dels[0].Attempts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mails %d, deliveries %+v", len(mails), dels)
		}
		time.Sleep(10 * time.Millisecond)
	}

	var er admin.EraseResult
	body := `{"address":"` + typed + `","confirm":"` + addr + `"}`
	if code := adminCall(t, e, "POST", "/admin/api/bindings/erase", body, &er); code != 200 {
		t.Fatalf("erase: %d", code)
	}
	// bbolt's freed pages are overwritten; PostgreSQL has no such step
	// (dead tuples go at vacuum), so its erasure says scrubbed false.
	onBolt := e.App.DB().Backend() == store.BackendBolt
	if want := (admin.EraseResult{Binding: true, Invites: 1, Mails: 2, Deliveries: 1, Sessions: 1, DevMails: 2, Scrubbed: onBolt}); er != want {
		t.Fatalf("erase: %+v, want %+v", er, want)
	}

	// Through the API: nothing bound, the ephemeral key no longer valid.
	if m, err := e.App.Identity().LookupHashed("sha256", pepper, []string{hash}); err != nil || len(m) != 0 {
		t.Fatalf("lookup after erasure: %v %v", m, err)
	}
	status, raw = e.Do(t, http.MethodGet, "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(ephemeral), nil, "")
	if status != 200 || !strings.Contains(string(raw), "false") {
		t.Fatalf("ephemeral isvalid after erasure: %d %s", status, raw)
	}
	if mails, _ := e.App.Mailbox().List(); len(mails) != 1 {
		t.Fatalf("dev mailbox after erasure: %+v", mails)
	}

	// The audit log names the erasure, redacted.
	entries, err := e.App.Admin().Audit(10, 0)
	if err != nil || len(entries) == 0 || entries[0].Action != "address.erase" || entries[0].Target != "e...@e..." || !entries[0].OK {
		t.Fatalf("audit %+v %v", entries, err)
	}

	// Nothing left in the raw bytes of any file in data_dir (the bbolt file
	// included): not the address in any case, not its local part, not its
	// lookup hash.
	rawHash, err := base64.RawURLEncoding.DecodeString(hash)
	if err != nil {
		t.Fatal(err)
	}
	needles := [][]byte{[]byte(addr), []byte(local), rawHash}
	if !onBolt {
		// On PostgreSQL: no row of any table holds them (in text form,
		// byte columns in hex), and the other address's invite is there.
		pgHolds(t, e, "frank@example.org", true)
		for _, n := range []string{addr, local, hash} {
			pgHolds(t, e, n, false)
		}
		for _, n := range needles {
			pgHolds(t, e, fmt.Sprintf("%x", n), false)
		}
	}
	files := 0
	err = filepath.WalkDir(e.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		lower := bytes.ToLower(b)
		for _, n := range needles {
			if bytes.Contains(lower, n) || bytes.Contains(b, n) {
				t.Errorf("%s still holds %q", path, n)
			}
		}
		if d.Name() == "herald.db" && !bytes.Contains(b, []byte("frank@example.org")) {
			t.Error("the other address's invite was erased too")
		}
		return nil
	})
	if err != nil || (onBolt && files < 2) {
		t.Fatalf("walk %s: %d files, %v", e.DataDir, files, err)
	}
	if logs := strings.ToLower(e.Logs()); strings.Contains(logs, addr) {
		t.Fatal("the address was logged in clear")
	}
}

// pgHolds checks whether some row of some table of e's PostgreSQL schema
// holds needle (case-insensitively) in its text form, as want says.
func pgHolds(t *testing.T, e *testenv.Env, needle string, want bool) {
	t.Helper()
	ctx := t.Context()
	pool := e.App.DB().PG().Pool()
	rows, err := pool.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("tables %v: %v", tables, err)
	}
	var where []string
	for _, tb := range tables {
		var n int
		q := `SELECT count(*) FROM ` + pgx.Identifier{tb}.Sanitize() + ` x WHERE strpos(lower(x::text), lower($1)) > 0`
		if err := pool.QueryRow(ctx, q, needle).Scan(&n); err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		if n > 0 {
			where = append(where, tb)
		}
	}
	if (len(where) > 0) != want {
		t.Errorf("tables holding %q: %v, want some: %v", needle, where, want)
	}
}

// TestAuditRedactsAddresses: an address typed as a login name, or carried by
// an error, reaches the audit log redacted.
func TestAuditRedactsAddresses(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) { c.Admin.APITokens = []config.Secret{adminToken} })
	// Unbinding an unbound address fails; its error names nothing in clear.
	if code := adminCall(t, e, "POST", "/admin/api/bindings/unbind", `{"address":"Grace.Hopper@Example.org"}`, nil); code == 200 {
		t.Fatal("unbind of an unbound address succeeded")
	}
	res, err := e.Client.Get(e.URL + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	var csrf string
	for _, c := range res.Cookies() {
		if c.Name == "herald_admin_login" {
			csrf = c.Value
		}
	}
	if csrf == "" {
		t.Fatal("no login form cookie")
	}
	{
		req, _ := http.NewRequest("POST", e.URL+"/admin/login", strings.NewReader(url.Values{"username": {"grace.hopper@example.org"}, "password": {"x"}, "csrf": {csrf}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: "herald_admin_login", Value: csrf})
		res, err := e.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	entries, err := e.App.Admin().Audit(10, 0)
	if err != nil || len(entries) != 2 || entries[0].Action != "login" || entries[0].Who != "g...@e..." || entries[1].Action != "binding.unbind" {
		t.Fatalf("audit %+v %v", entries, err)
	}
	raw, _ := json.Marshal(entries)
	if strings.Contains(strings.ToLower(string(raw)), "grace.hopper") {
		t.Fatalf("audit log holds an address in clear: %s", raw)
	}
}

// An invite past its expiry shows as expired, with an "expired" entry in its
// timeline, whether or not the sweeper has marked it yet.
func TestAdminExpiredTimeline(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) { c.Admin.APITokens = []config.Secret{adminToken} })
	tok := e.Register(t, "@alice:hs.test")
	e.AcceptTerms(t, tok)
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "late@example.org", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
	}, tok)
	if status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	var list struct {
		Invites []invites.View `json:"invites"`
	}
	adminCall(t, e, "GET", "/admin/api/invites?q=late@example.org", "", &list)
	if len(list.Invites) != 1 || list.Invites[0].Expires.IsZero() {
		t.Fatalf("invites %+v", list.Invites)
	}
	// The invite's mail is sent before the clock moves past the expiry: an
	// attempt recorded after the move would come after the expiry.
	waitFor(t, "the invite mail to be sent", func() bool {
		st, err := e.App.Mailer().Stats()
		return err == nil && st.Sent == 1
	})
	e.Clock.Advance(time.Until(list.Invites[0].Expires) + time.Minute)
	var inv inviteAnswer
	if code := adminCall(t, e, "GET", "/admin/api/invites/"+list.Invites[0].ID, "", &inv); code != 200 {
		t.Fatalf("invite: %d", code)
	}
	last := inv.Timeline[len(inv.Timeline)-1]
	if inv.Invite.State != invites.StateExpired || last.Kind != invites.StateExpired || !last.At.Equal(inv.Invite.Expires) {
		t.Fatalf("state %s, timeline ends with %+v", inv.Invite.State, last)
	}
}

// snakeKeys reports every object key in v (decoded JSON) that is not
// snake_case, with its path.
func snakeKeys(path string, v any, bad *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, sub := range x {
			if !regexp.MustCompile(`^[a-z][a-z0-9_]*$`).MatchString(k) {
				*bad = append(*bad, path+"."+k)
			}
			snakeKeys(path+"."+k, sub, bad)
		}
	case []any:
		for _, sub := range x {
			snakeKeys(path+"[]", sub, bad)
		}
	}
}

// documentedStates reads the state filters docs/admin.md lists for an API
// route ("| `GET /admin/api/deliveries` | `state` (pending, ...)") or, for
// invites, the dashboard's "Invites by state (...)".
func documentedStates(t *testing.T, doc, marker string) []string {
	t.Helper()
	for _, line := range strings.Split(doc, "\n") {
		if !strings.Contains(line, marker) {
			continue
		}
		m := regexp.MustCompile(`(?:\x60state\x60|Invites by state) \(([a-z, ]+)\)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("docs/admin.md: no state list on the line of %s", marker)
		}
		return strings.Split(m[1], ", ")
	}
	t.Fatalf("docs/admin.md: no line with %s", marker)
	return nil
}

// Every state docs/admin.md lists is accepted as a filter by the console's
// JSON API, every key it answers with is snake_case, and an unknown state is
// a 400.
func TestAdminAPIStatesAndFieldNames(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "admin.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	e := testenv.Start(t, func(c *config.Config) {
		c.Admin.APITokens = []config.Secret{adminToken}
		c.Delivery.MinBackoff, c.Delivery.MaxBackoff = config.Duration(time.Hour), config.Duration(time.Hour)
	})
	// Something in every list: an invite (and its mail), resolved by a bind
	// into a delivery.
	tok := e.Register(t, "@alice:hs.test")
	e.AcceptTerms(t, tok)
	if status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", map[string]any{
		"medium": "email", "address": "states@example.org", "room_id": "!room:hs.test", "sender": "@alice:hs.test",
	}, tok); status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	id := e.App.Identity()
	if err := id.DB().Update(func(tx *store.Tx) error {
		return id.PutBinding(tx, identity.Binding{Medium: "email", Address: "states@example.org", MXID: "@s:hs2.test"})
	}); err != nil {
		t.Fatal(err)
	}

	get := func(path string) (int, any) {
		t.Helper()
		var v any
		return adminCall(t, e, "GET", path, "", &v), v
	}
	check := func(path string) any {
		t.Helper()
		status, v := get(path)
		if status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, status)
		}
		var bad []string
		snakeKeys("", v, &bad)
		if len(bad) > 0 {
			t.Errorf("GET %s: keys not in snake_case: %v", path, bad)
		}
		return v
	}
	for route, marker := range map[string]string{
		"/admin/api/invites":    "Invites by state",
		"/admin/api/outbox":     "`GET /admin/api/outbox`",
		"/admin/api/deliveries": "`GET /admin/api/deliveries`",
	} {
		states := documentedStates(t, doc, marker)
		if len(states) < 3 {
			t.Fatalf("%s: documented states %v", route, states)
		}
		for _, s := range append(states, "") {
			check(route + "?state=" + s)
		}
		if status, _ := get(route + "?state=nonsense"); status != http.StatusBadRequest {
			t.Errorf("%s?state=nonsense: %d, want 400", route, status)
		}
	}
	// The other answers, and one of each record.
	check("/admin/api/dashboard")
	check("/admin/api/keys")
	check("/admin/api/settings")
	check("/admin/api/audit")
	check("/admin/api/bindings?address=states@example.org")
	// The mails are sent first: an invite whose mail went out between the
	// two reads below would answer differently (its mail state).
	waitFor(t, "the outbox to be sent", func() bool {
		st, err := e.App.Mailer().Stats()
		return err == nil && st.Pending == 0
	})
	for route, list := range map[string]string{"/admin/api/invites/": "invites", "/admin/api/outbox/": "items", "/admin/api/deliveries/": "items"} {
		v := check(strings.TrimSuffix(route, "/")).(map[string]any)
		items, _ := v[list].([]any)
		if len(items) == 0 {
			t.Fatalf("%s: nothing listed", route)
		}
		id := items[0].(map[string]any)["id"].(string)
		// The console's path parameters may be percent-encoded too. A
		// record may still move between two reads (an onbind delivery
		// the test homeserver refuses is retried every few seconds), so
		// the encoded read must match a plain read next to it in one of
		// three tries; a wrong route never does.
		var enc strings.Builder
		for _, b := range []byte(id) {
			fmt.Fprintf(&enc, "%%%02X", b)
		}
		for try := 1; ; try++ {
			plain := check(route + id)
			status, v := get(route + enc.String())
			if status == http.StatusOK && reflect.DeepEqual(v, plain) {
				break
			}
			if try == 3 {
				t.Errorf("GET %s%s: %d, want the answer of %s%s", route, enc.String(), status, route, id)
				break
			}
		}
	}
}
