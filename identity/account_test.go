package identity_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/store"
)

const v2 = "/_matrix/identity/v2"

func errcode(t *testing.T, body []byte) string {
	t.Helper()
	var r struct {
		Errcode string `json:"errcode"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("not a JSON error: %s", body)
	}
	return r.Errcode
}

func expectError(t *testing.T, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || errcode(t, body) != wantCode {
		t.Errorf("got %d %s, want %d %s", status, body, wantStatus, wantCode)
	}
}

func register(e *testenv.Env, t *testing.T, openID, server string) (int, []byte) {
	t.Helper()
	return e.Do(t, http.MethodPost, v2+"/account/register", map[string]any{
		"access_token": openID, "token_type": "Bearer", "matrix_server_name": server, "expires_in": 3600,
	}, "")
}

func TestRegister(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) {
		c.Federation.Servers["dead.test"] = "http://127.0.0.1:1"
	})
	openID := e.HS.OpenIDToken("@alice:hs.test")
	status, body := register(e, t, openID, "hs.test")
	if status != http.StatusOK {
		t.Fatalf("register: %d %s", status, body)
	}
	var resp struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || resp.Token == "" || resp.Token != resp.AccessToken {
		t.Fatalf("register answer %s: want token == access_token", body)
	}
	reqs := e.HS.Requests()
	if len(reqs) != 1 || reqs[0].Path != "/_matrix/federation/v1/openid/userinfo" || !strings.Contains(reqs[0].Query, openID) {
		t.Errorf("homeserver requests: %+v", reqs)
	}

	t.Run("sub of another server", func(t *testing.T) {
		tok := e.HS.OpenIDToken("@eve:evil.test")
		status, body := register(e, t, tok, "hs.test")
		expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	})
	t.Run("unknown OpenID token", func(t *testing.T) {
		status, body := register(e, t, "made-up", "hs.test")
		expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	})
	t.Run("homeserver failing", func(t *testing.T) {
		e.HS.SetDown(true)
		defer e.HS.SetDown(false)
		status, body := register(e, t, e.HS.OpenIDToken("@alice:hs.test"), "hs.test")
		expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	})
	t.Run("homeserver unreachable", func(t *testing.T) {
		secret := "openid-secret-" + strings.Repeat("x", 20)
		status, body := register(e, t, secret, "dead.test")
		expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
		if strings.Contains(e.Logs(), secret) {
			t.Errorf("the OpenID token reached the logs:\n%s", e.Logs())
		}
	})
	t.Run("bad server name", func(t *testing.T) {
		before := len(e.HS.Requests())
		for _, name := range []string{"evil.test/path", "a b", "@hs.test", "hs_test", "[::1", "hs.test:port"} {
			status, body := register(e, t, "x", name)
			expectError(t, status, body, http.StatusBadRequest, "M_INVALID_PARAM")
		}
		if len(e.HS.Requests()) != before {
			t.Error("an invalid server name reached a homeserver")
		}
	})
	for _, c := range []struct {
		name, body, code string
	}{
		{"empty body", "", "M_NOT_JSON"},
		{"malformed", `{"access_token":`, "M_NOT_JSON"},
		{"not an object", `["access_token"]`, "M_BAD_JSON"},
		{"wrong type", `{"access_token": 5, "token_type": "Bearer", "matrix_server_name": "hs.test"}`, "M_BAD_JSON"},
		{"missing keys", `{"token_type": "Bearer"}`, "M_MISSING_PARAMS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, body := e.Do(t, http.MethodPost, v2+"/account/register", c.body, "")
			expectError(t, status, body, http.StatusBadRequest, c.code)
		})
	}
	if strings.Contains(e.Logs(), openID) {
		t.Errorf("an OpenID token reached the logs")
	}
}

func TestAccountAndLogout(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@alice:hs.test")
	other := e.Register(t, "@alice:hs.test") // a second session of the same user

	status, body := e.Do(t, http.MethodGet, v2+"/account", nil, tok)
	if status != http.StatusOK || !bytes.Contains(body, []byte(`"user_id":"@alice:hs.test"`)) {
		t.Fatalf("account (Bearer): %d %s", status, body)
	}
	req, _ := http.NewRequest(http.MethodGet, v2+"/account?access_token="+tok, nil)
	if resp := e.DoRequest(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("account (query): %d", resp.StatusCode)
	}

	status, body = e.Do(t, http.MethodGet, v2+"/account", nil, "")
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	status, body = e.Do(t, http.MethodGet, v2+"/account", nil, "not-a-token")
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")

	// Tokens are stored hashed: the raw token is nowhere in the database
	// (the bbolt file's bytes; on PostgreSQL, the text of every row of the
	// accounts table, where a bytea shows in hex, so both forms are looked for).
	var raw []byte
	if e.App.DB().Backend() == store.BackendPostgres {
		err := e.App.DB().View(func(tx *store.Tx) error {
			rows, err := tx.PG.Query(tx.Context(), `SELECT x::text FROM identity_accounts x`)
			if err != nil {
				return err
			}
			texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if len(texts) < 2 {
				t.Errorf("%d account rows, want the two sessions", len(texts))
			}
			raw = []byte(strings.Join(texts, "\n"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if raw, err = os.ReadFile(filepath.Join(e.DataDir, store.FileName)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tk := range []string{tok, other} {
		if bytes.Contains(raw, []byte(tk)) || bytes.Contains(raw, []byte(hex.EncodeToString([]byte(tk)))) {
			t.Fatal("an access token is stored in clear in the database")
		}
	}
	if strings.Contains(e.Logs(), tok) {
		t.Fatal("an access token reached the logs")
	}

	// Logout kills that token only.
	status, body = e.Do(t, http.MethodPost, v2+"/account/logout", nil, tok)
	if status != http.StatusOK {
		t.Fatalf("logout: %d %s", status, body)
	}
	status, body = e.Do(t, http.MethodGet, v2+"/account", nil, tok)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	status, body = e.Do(t, http.MethodPost, v2+"/account/logout", nil, tok)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	if status, body := e.Do(t, http.MethodGet, v2+"/account", nil, other); status != http.StatusOK {
		t.Fatalf("other session after logout: %d %s", status, body)
	}

	// Sessions survive a restart.
	e.Restart(t)
	if status, body := e.Do(t, http.MethodGet, v2+"/account", nil, other); status != http.StatusOK {
		t.Fatalf("session after restart: %d %s", status, body)
	}
	status, body = e.Do(t, http.MethodGet, v2+"/account", nil, tok)
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
}

func TestNoTermsConfigured(t *testing.T) {
	e := testenv.Start(t)
	status, body := e.Do(t, http.MethodGet, v2+"/terms", nil, "")
	if status != http.StatusOK || string(bytes.TrimSpace(body)) != `{"policies":{}}` {
		t.Fatalf("terms: %d %s", status, body)
	}
	tok := e.Register(t, "@alice:hs.test")
	if status, body := e.Do(t, http.MethodGet, v2+"/hash_details", nil, tok); status != http.StatusOK {
		t.Fatalf("hash_details without terms: %d %s", status, body)
	}
	// Accepting nothing (or unknown URLs) is fine.
	if status, body := e.Do(t, http.MethodPost, v2+"/terms", map[string]any{"user_accepts": []string{"https://elsewhere.test/x"}}, tok); status != http.StatusOK {
		t.Fatalf("post terms: %d %s", status, body)
	}
}

func policy(version string, langs ...string) config.Policy {
	p := config.Policy{Version: version, Languages: map[string]config.PolicyLanguage{}}
	for _, l := range langs {
		p.Languages[l] = config.PolicyLanguage{Name: "Policy " + l, URL: "https://herald.test/policy/" + version + "/" + l + ".html"}
	}
	return p
}

func TestTermsGate(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{
			"privacy_policy":   policy("1.0", "en", "fr"),
			"terms_of_service": policy("2.0", "en"),
		}
	})
	status, body := e.Do(t, http.MethodGet, v2+"/terms", nil, "")
	if status != http.StatusOK {
		t.Fatalf("terms: %d %s", status, body)
	}
	var terms struct {
		Policies map[string]map[string]json.RawMessage `json:"policies"`
	}
	if err := json.Unmarshal(body, &terms); err != nil || len(terms.Policies) != 2 ||
		string(terms.Policies["privacy_policy"]["version"]) != `"1.0"` ||
		!bytes.Contains(terms.Policies["privacy_policy"]["fr"], []byte(`"url":"https://herald.test/policy/1.0/fr.html"`)) {
		t.Fatalf("terms body %s", body)
	}

	tok := e.Register(t, "@alice:hs.test")
	gated := func() (int, []byte) { return e.Do(t, http.MethodGet, v2+"/hash_details", nil, tok) }
	status, body = gated()
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	status, body = e.Do(t, http.MethodPost, v2+"/lookup", map[string]any{"addresses": []string{}, "algorithm": "sha256", "pepper": "x"}, tok)
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	// Not gated: account, terms, logout (below).
	if status, body := e.Do(t, http.MethodGet, v2+"/account", nil, tok); status != http.StatusOK {
		t.Fatalf("account is gated: %d %s", status, body)
	}

	accept := func(urls ...string) {
		t.Helper()
		if status, body := e.Do(t, http.MethodPost, v2+"/terms", map[string]any{"user_accepts": urls}, tok); status != http.StatusOK {
			t.Fatalf("post terms: %d %s", status, body)
		}
	}
	// The French URL accepts the privacy policy; acceptances add up over calls.
	accept("https://herald.test/policy/1.0/fr.html")
	status, body = gated()
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	accept("https://herald.test/policy/2.0/en.html", "https://unknown.test/ignored")
	if status, body := gated(); status != http.StatusOK {
		t.Fatalf("after accepting everything: %d %s", status, body)
	}

	// A new version of a policy must be accepted again.
	e.Restart(t, func(c *config.Config) {
		c.Terms.Policies["terms_of_service"] = policy("3.0", "en")
	})
	status, body = gated()
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	accept("https://herald.test/policy/2.0/en.html") // the old version does not count
	status, body = gated()
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	accept("https://herald.test/policy/3.0/en.html")
	if status, body := gated(); status != http.StatusOK {
		t.Fatalf("after accepting the new version: %d %s", status, body)
	}

	// Another user starts from scratch.
	tok2 := e.Register(t, "@bob:hs.test")
	status, body = e.Do(t, http.MethodGet, v2+"/hash_details", nil, tok2)
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	if status, body := e.Do(t, http.MethodPost, v2+"/account/logout", nil, tok2); status != http.StatusOK {
		t.Fatalf("logout is gated: %d %s", status, body)
	}
}

func TestPostTermsErrors(t *testing.T) {
	e := testenv.Start(t)
	status, body := e.Do(t, http.MethodPost, v2+"/terms", map[string]any{"user_accepts": []string{}}, "")
	expectError(t, status, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	tok := e.Register(t, "@alice:hs.test")
	status, body = e.Do(t, http.MethodPost, v2+"/terms", `{}`, tok)
	expectError(t, status, body, http.StatusBadRequest, "M_MISSING_PARAMS")
	status, body = e.Do(t, http.MethodPost, v2+"/terms", `{"user_accepts": "https://x"}`, tok)
	expectError(t, status, body, http.StatusBadRequest, "M_BAD_JSON")
	status, body = e.Do(t, http.MethodPost, v2+"/terms", `nope`, tok)
	expectError(t, status, body, http.StatusBadRequest, "M_NOT_JSON")
}

// One document may serve as several policies: accepting its URL accepts each.
func TestTermsSharedURL(t *testing.T) {
	shared := config.PolicyLanguage{Name: "Terms and privacy", URL: "https://herald.test/legal.html"}
	e := testenv.Start(t, func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{
			"privacy_policy":   {Version: "1", Languages: map[string]config.PolicyLanguage{"en": shared}},
			"terms_of_service": {Version: "1", Languages: map[string]config.PolicyLanguage{"en": shared}},
		}
	})
	tok := e.Register(t, "@alice:hs.test")
	status, body := e.Do(t, http.MethodGet, v2+"/hash_details", nil, tok)
	expectError(t, status, body, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
	if status, body := e.Do(t, http.MethodPost, v2+"/terms", map[string]any{"user_accepts": []string{shared.URL}}, tok); status != http.StatusOK {
		t.Fatalf("post terms: %d %s", status, body)
	}
	if status, body := e.Do(t, http.MethodGet, v2+"/hash_details", nil, tok); status != http.StatusOK {
		t.Fatalf("after accepting the shared document: %d %s", status, body)
	}
}

// matrix-is-tester and some scripts post only access_token and
// matrix_server_name: a missing token_type means Bearer; any other is refused.
func TestRegisterWithoutTokenType(t *testing.T) {
	e := testenv.Start(t)
	status, body := e.Do(t, http.MethodPost, v2+"/account/register", map[string]any{
		"access_token": e.HS.OpenIDToken("@alice:hs.test"), "matrix_server_name": "hs.test",
	}, "")
	if status != http.StatusOK || !bytes.Contains(body, []byte(`"token"`)) {
		t.Fatalf("register without token_type: %d %s", status, body)
	}
	status, body = e.Do(t, http.MethodPost, v2+"/account/register", map[string]any{
		"access_token": e.HS.OpenIDToken("@alice:hs.test"), "token_type": "MAC", "matrix_server_name": "hs.test",
	}, "")
	expectError(t, status, body, http.StatusBadRequest, "M_INVALID_PARAM")
}
