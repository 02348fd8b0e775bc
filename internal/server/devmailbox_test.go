package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
)

// Issue 9 point 2: with no smtp.host the dev mailbox (validation codes,
// invite links) is served by nothing but the console, behind its login.
func TestDevMailboxOnlyBehindConsoleLogin(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, func(c *config.Config) {
		c.SMTP.Host = ""
		c.Admin.APITokens = []config.Secret{adminToken}
	})
	raw := "From: Herald <herald@herald.test>\r\nTo: bob@example.org\r\nSubject: Confirm your address\r\n\r\nYour code: 924173\r\n"
	if err := e.App.Mailbox().Send(context.Background(), "herald@herald.test", []string{"bob@example.org"}, []byte(raw)); err != nil {
		t.Fatal(err)
	}
	mails, err := e.App.Mailbox().List()
	if err != nil || len(mails) != 1 {
		t.Fatalf("dev mailbox: %v %v", mails, err)
	}
	get := func(path, token string) (int, http.Header, string) {
		t.Helper()
		req := mustRequest(t, http.MethodGet, path)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp := doAny(t, e, req)
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	for _, path := range []string{"/_herald/mailbox", "/_herald/mailbox/" + mails[0].Name, "/_herald/mailbox/" + mails[0].Name + "?part=raw"} {
		if status, _, body := get(path, ""); status != http.StatusNotFound || strings.Contains(body, "924173") {
			t.Errorf("GET %s without login: %d %s", path, status, body)
		}
	}
	// Without a session the console's page goes to the login form, its API
	// asks for a token.
	if status, h, body := get("/admin/mailbox", ""); status != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/admin/login") || strings.Contains(body, "924173") {
		t.Errorf("GET /admin/mailbox without login: %d %q", status, h.Get("Location"))
	}
	if status, _, body := get("/admin/api/mailbox", ""); status != http.StatusUnauthorized || strings.Contains(body, "bob@") {
		t.Errorf("GET /admin/api/mailbox without a token: %d %s", status, body)
	}
	// With the console's credentials the mail is there.
	status, _, body := get("/admin/api/mailbox", adminToken)
	var list struct {
		Mails []struct{ ID string } `json:"mails"`
	}
	if status != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list.Mails) != 1 {
		t.Fatalf("GET /admin/api/mailbox: %d %s", status, body)
	}
	if status, _, body := get("/admin/api/mailbox/"+list.Mails[0].ID, adminToken); status != http.StatusOK || !strings.Contains(body, "924173") {
		t.Fatalf("GET /admin/api/mailbox/ID: %d %s", status, body)
	}
}
