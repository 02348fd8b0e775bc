package sydent_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/internal/spectest"
	"github.com/herald-im/herald/internal/sydentfixture"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/sydent"
)

const termsURL = "https://sydent.example.org/terms/privacy-en.html"

// TestImportTermsAndValidityPathPrefix: accepted terms URLs become
// acceptance of the Herald policy with the same URL (so the user is not
// asked again), and when sydent's client_http_base had a path its
// key_validity_urls are served under that path.
func TestImportTermsAndValidityPathPrefix(t *testing.T) {
	src := t.TempDir()
	g, err := sydentfixture.Generate(context.Background(), src, 30)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", g.DB)
	if err != nil {
		t.Fatal(err)
	}
	// Two users of the generated tokens: one accepted the policy, one a URL
	// Herald's terms do not list.
	if _, err := db.Exec("INSERT INTO accepted_terms_urls (user_id, url) VALUES ('@u0000000:hs0.test', ?), ('@u0000010:hs10.test', 'https://elsewhere.example/terms')", termsURL); err != nil {
		t.Fatal(err)
	}
	var tok0, tok10 string
	if err := db.QueryRow("SELECT token FROM tokens WHERE user_id = '@u0000000:hs0.test'").Scan(&tok0); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT token FROM tokens WHERE user_id = '@u0000010:hs10.test'").Scan(&tok10); err != nil {
		t.Fatal(err)
	}
	var pub string
	if err := db.QueryRow("SELECT public_key FROM ephemeral_public_keys LIMIT 1").Scan(&pub); err != nil {
		t.Fatal(err)
	}
	db.Close()
	conf, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	conf = []byte(strings.Replace(string(conf), "client_http_base = https://sydent-bench.example.org", "client_http_base = https://example.org/identity/", 1))
	if err := os.WriteFile(g.Config, conf, 0o600); err != nil {
		t.Fatal(err)
	}

	var report *sydent.Report
	// bbolt: herald import sydent writes a bbolt data_dir only (then migrate-storage copies it).
	env := testenv.Start(t, testenv.Bolt, func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{"privacy": {Version: "1.0",
			Languages: map[string]config.PolicyLanguage{"en": {Name: "Privacy", URL: termsURL}}}}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		scfg, err := sydent.ReadConfig(g.Config)
		if err != nil {
			t.Fatal(err)
		}
		a, err := server.New(c, slog.New(slog.NewTextHandler(io.Discard, nil)), server.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		report, err = sydent.Import(context.Background(), sydent.Target{DB: a.DB(), Identity: a.Identity(), Invites: a.Invites(),
			Ring: a.Ring(), Ephemeral: a.Ephemeral()}, g.DB, scfg, sydent.Options{})
		if err != nil {
			t.Fatal(err)
		}
	})
	if report.Terms.Imported != 1 || report.Terms.Skipped["URL of no policy in Herald's terms configuration"] != 1 {
		t.Errorf("terms: %+v", report.Terms)
	}
	// The user who accepted the policy at sydent may look up; the other is
	// asked to accept it.
	for tok, want := range map[string]int{tok0: 200, tok10: 403} {
		status, body := env.Do(t, "GET", "/_matrix/identity/v2/hash_details", nil, tok)
		if status != want {
			t.Errorf("hash_details: %d %s, want %d", status, body, want)
		}
	}
	for _, p := range []string{"/identity/_matrix/identity/api/v1/pubkey/ephemeral/isvalid", "/_matrix/identity/api/v1/pubkey/ephemeral/isvalid"} {
		resp, err := env.Client.Get(env.URL + p + "?public_key=" + url.QueryEscape(pub))
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Valid bool }
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The spec knows the path without the proxy's prefix.
		spectest.Validate(t, "GET", strings.TrimPrefix(p, "/identity"), resp.StatusCode, raw)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &v) != nil || !v.Valid {
			t.Errorf("GET %s: %d %s", p, resp.StatusCode, raw)
		}
	}
}
