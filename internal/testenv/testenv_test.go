package testenv_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/herald-im/herald/internal/testenv"
)

func TestStartRegisterRestart(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@alice:hs.test")
	status, body := e.Do(t, http.MethodGet, "/_matrix/identity/v2/account", nil, tok)
	if status != http.StatusOK {
		t.Fatalf("account: %d %s", status, body)
	}
	var acc struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(body, &acc); err != nil || acc.UserID != "@alice:hs.test" {
		t.Fatalf("account = %s", body)
	}
	url := e.URL
	e.Restart(t)
	if e.URL != url {
		t.Errorf("URL changed across Restart: %s -> %s", url, e.URL)
	}
	if status, body := e.Do(t, http.MethodGet, "/_matrix/identity/v2/account", nil, tok); status != http.StatusOK {
		t.Fatalf("account after restart: %d %s", status, body)
	}
	req, _ := http.NewRequest(http.MethodGet, "/_matrix/identity/v2/account?access_token="+tok, nil)
	if resp := e.DoRequest(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("query-token account: %d", resp.StatusCode)
	}
	if n := len(e.HS.Requests()); n != 1 {
		t.Errorf("fake homeserver saw %d requests, want 1", n)
	}
}
