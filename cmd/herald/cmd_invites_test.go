package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/hssim"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
)

func TestInvitesRevokeCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hs := hssim.New(t, "hs.test", hssim.Synapse)
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.SMTP.Host = "" // dev mailbox
	cfg.Federation.Servers = map[string]string{"hs.test": hs.URL}
	cfg.Federation.AllowPrivateAddresses = true
	a, err := server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	post := func(path, token string, body any) []byte {
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", srv.URL+path, bytes.NewReader(raw))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, out)
		}
		return out
	}
	var reg struct{ Token string }
	_ = json.Unmarshal(post("/_matrix/identity/v2/account/register", "", map[string]any{
		"access_token": hs.AddUser("@alice:hs.test"), "token_type": "Bearer", "matrix_server_name": "hs.test"}), &reg)
	var ans struct{ Token string }
	_ = json.Unmarshal(post("/_matrix/identity/v2/store-invite", reg.Token, map[string]any{
		"medium": "email", "address": "zoe@example.org", "room_id": "!r:hs.test", "sender": "@alice:hs.test"}), &ans)
	inv, err := a.Invites().ByToken(ans.Token)
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	a.Close()

	env := []string{"HERALD_DATA_DIR=" + dir}
	invitesCmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"invites"}, args...), env, &out, io.Discard)
		return out.String(), err
	}
	if out, err := invitesCmd("revoke", "1"); err != nil || !strings.Contains(out, "invite 1 revoked") || inv.ID != 1 {
		t.Fatalf("revoke: %q %v", out, err)
	}
	if _, err := invitesCmd("revoke", "1"); err == nil {
		t.Fatal("revoking twice succeeded")
	}
	if _, err := invitesCmd("revoke", "99"); err == nil || !strings.Contains(err.Error(), "no invite 99") {
		t.Fatalf("unknown invite: %v", err)
	}
	for _, args := range [][]string{{}, {"revoke"}, {"revoke", "x"}, {"frobnicate"}} {
		if _, err := invitesCmd(args...); err == nil {
			t.Errorf("invites %v: no usage error", args)
		}
	}
	if out, err := invitesCmd("help"); err != nil || !strings.Contains(out, "revoke ID") {
		t.Errorf("help: %q %v", out, err)
	}

	a, err = server.New(&cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got, err := a.Invites().Get(1)
	if err != nil || got.State != invites.StateRevoked {
		t.Fatalf("after revoke: %+v %v", got, err)
	}
	if ok, _ := a.Ephemeral().IsValid(got.EphemeralPublic); ok {
		t.Fatal("revoked invite's ephemeral key still valid")
	}
}
