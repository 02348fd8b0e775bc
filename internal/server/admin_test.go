package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
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
	Invite   admin.Invite  `json:"invite"`
	Timeline []admin.Event `json:"timeline"`
	Mails    []admin.Mail  `json:"mails"`
}

// TestAdminWiring drives the console's API against the real services: an
// invite stored over the Matrix API shows up, its email is sent to the dev
// mailbox, it can be resent, revoked and erased.
func TestAdminWiring(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) { c.Admin.APITokens = []config.Secret{adminToken} })
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
		Invites []admin.Invite `json:"invites"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code := adminCall(t, e, "GET", "/admin/api/invites?q=bob.smith@example.org", "", &list); code != 200 {
			t.Fatalf("list: %d", code)
		}
		if len(list.Invites) == 1 && list.Invites[0].State == admin.StateEmailed {
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
		Outbox admin.QueueStats `json:"outbox"`
		PerDay []admin.DayCount `json:"per_day"`
	}
	adminCall(t, e, "GET", "/admin/api/dashboard", "", &dash)
	if dash.Invites[1].State != admin.StateEmailed || dash.Invites[1].Count != 1 || dash.Invites[0].Count != 0 || dash.Outbox.Done != 1 || dash.PerDay[29].Created != 1 {
		t.Fatalf("dashboard %+v", dash)
	}
	if code := adminCall(t, e, "POST", "/admin/api/invites/"+id+"/resend", "", nil); code != 200 {
		t.Fatalf("resend: %d", code)
	}
	adminCall(t, e, "GET", "/admin/api/invites/"+id, "", &inv)
	if len(inv.Mails) != 2 {
		t.Fatalf("%d mails after resend", len(inv.Mails))
	}
	if code := adminCall(t, e, "POST", "/admin/api/invites/"+id+"/revoke", "", nil); code != 200 {
		t.Fatalf("revoke: %d", code)
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
		Mails []admin.DevMail `json:"mails"`
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(mb.Mails) < 2 && time.Now().Before(deadline) {
		adminCall(t, e, "GET", "/admin/api/mailbox", "", &mb)
		time.Sleep(20 * time.Millisecond)
	}
	if len(mb.Mails) < 2 {
		t.Fatalf("mailbox %+v", mb)
	}
	var dm admin.DevMail
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

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAdminSeparateListener: with admin.listen the console is served there,
// and not on the public listener.
func TestAdminSeparateListener(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	var logs lockedBuffer
	a, err := server.New(&cfg, slog.New(slog.NewTextHandler(&logs, nil)), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		a.Close()
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
	res, err = http.Get("http://" + ln.Addr().String() + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("console on the public listener: %d", res.StatusCode)
	}
}
