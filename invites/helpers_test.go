package invites_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/store"
)

const (
	alice = "@alice:hs.test"
	bob   = "@bob:hs2.test"
)

type env struct {
	*testenv.Env
	SMTP *smtptest.Server
}

// start runs Herald with an in-process SMTP server and no rate limits unless
// a mutate sets them.
func start(t testing.TB, mutate ...func(*config.Config)) *env {
	t.Helper()
	return startWith(t, server.Options{}, mutate...)
}

// startWith is start with server options (hooks).
func startWith(t testing.TB, opts server.Options, mutate ...func(*config.Config)) *env {
	t.Helper()
	srv := smtptest.Start(t, smtptest.Options{})
	all := append([]func(*config.Config){func(c *config.Config) {
		c.SMTP.Host, c.SMTP.Port, c.SMTP.Security = srv.Host, srv.Port, "none"
		c.Invites.RateLimits.Sender.PerHour = 0
		c.Invites.RateLimits.Room.PerHour = 0
		c.Invites.RateLimits.Address.PerHour = 0
		c.Invites.RateLimits.Homeserver.PerHour = 0
		c.Email.WebClientURL = "https://app.element.io"
		c.Email.WebClientAllowlist = []string{"https://chat.example.org"}
	}}, mutate...)
	return &env{Env: testenv.StartWith(t, opts, all...), SMTP: srv}
}

func (e *env) register(t testing.TB, user string) string {
	t.Helper()
	tok := e.Register(t, user)
	e.AcceptTerms(t, tok)
	return tok
}

func inviteBody(sender, address string) map[string]any {
	return map[string]any{
		"medium": "email", "address": address, "room_id": "!room:hs.test", "sender": sender,
		"room_alias": "#tea:hs.test", "room_avatar_url": "mxc://hs.test/avatar", "room_join_rules": "invite",
		"room_name": "Tea & Cake", "sender_display_name": "Alice <A>", "sender_avatar_url": "mxc://hs.test/alice",
	}
}

type storeAnswer struct {
	Token      string `json:"token"`
	PublicKey  string `json:"public_key"`
	PublicKeys []struct {
		PublicKey      string `json:"public_key"`
		KeyValidityURL string `json:"key_validity_url"`
	} `json:"public_keys"`
	DisplayName string `json:"display_name"`
}

func (e *env) storeInvite(t testing.TB, tok string, body any) storeAnswer {
	t.Helper()
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/store-invite", body, tok)
	if status != http.StatusOK {
		t.Fatalf("store-invite: %d %s", status, raw)
	}
	var a storeAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

func (e *env) bind(t testing.TB, address, mxid string) {
	t.Helper()
	id := e.App.Identity()
	err := id.DB().Update(func(tx *store.Tx) error {
		return id.PutBinding(tx, identity.Binding{Medium: "email", Address: address, MXID: mxid})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func errcode(t testing.TB, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("error body %s: %v", raw, err)
	}
	return m
}

// waitMail waits for n messages and parses the last one.
func (e *env) waitMail(t testing.TB, n int) (*mailer.Parsed, []smtptest.Message) {
	t.Helper()
	msgs := e.SMTP.WaitFor(n, 10*time.Second)
	if len(msgs) < n {
		t.Fatalf("got %d mails, want %d", len(msgs), n)
	}
	p, err := mailer.Parse(msgs[n-1].Data)
	if err != nil {
		t.Fatalf("parse mail: %v", err)
	}
	return p, msgs
}

func readAll(resp *http.Response) []byte {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}
