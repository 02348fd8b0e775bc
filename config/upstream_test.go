package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lookup.upstream entries load from YAML, and each mistake is one line
// naming the key.
func TestUpstreamKeys(t *testing.T) {
	good := `lookup:
  upstream:
    - base_url: https://vector.im
      homeserver_url: https://matrix.example.org
      user_id: "@herald:example.org"
      access_token: syt_abc
      accept_terms: true
  upstream_timeout: 1500ms
  upstream_email: none
`
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(good), 0o600)
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := c.Lookup.Upstream
	if len(u) != 1 || u[0].BaseURL != "https://vector.im" || u[0].UserID != "@herald:example.org" || u[0].AccessToken != "syt_abc" ||
		!u[0].AcceptTerms || u[0].AllowPlaintext || u[0].AllowPrivate || c.Lookup.UpstreamEmail != "none" || c.Lookup.UpstreamTimeout.D().Milliseconds() != 1500 {
		t.Fatalf("loaded %+v", c.Lookup)
	}
	entry := func(s string) string {
		return "lookup: {upstream: [{base_url: 'https://is.example', homeserver_url: 'https://hs.example', user_id: '@h:hs.example', access_token: t, " + s + "}]}"
	}
	for yml, key := range map[string]string{
		"lookup: {upstream_timeout: 0s}":            "lookup.upstream_timeout",
		"lookup: {upstream_timeout: 1m}":            "lookup.upstream_timeout",
		"lookup: {upstream_email: always}":          "lookup.upstream_email",
		entry("base_url: 'http://is.example'"):      "lookup.upstream[0].base_url",
		entry("homeserver_url: 'ftp://hs.example'"): "lookup.upstream[0].homeserver_url",
		entry("user_id: herald"):                    "lookup.upstream[0].user_id",
		entry("access_token: ''"):                   "lookup.upstream[0].access_token",
		entry("accept_terms: maybe"):                "lookup.upstream[0].accept_terms",
		"lookup: {upstream: [{base_url: 'https://is.example', homeserver_url: 'https://hs.example', user_id: '@h:hs.example', access_token: t}, " +
			"{base_url: 'https://is.example/', homeserver_url: 'https://hs.example', user_id: '@h:hs.example', access_token: t}]}": "lookup.upstream[1].base_url",
	} {
		os.WriteFile(path, []byte(yml), 0o600)
		_, err := Load(path, nil)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v, want an error naming %s", yml, err, key)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: multi-line error %q", yml, err)
		}
	}
	// Plain http is accepted for an upstream the operator marked private.
	os.WriteFile(path, []byte(entry("base_url: 'http://127.0.0.1:8090', allow_private: true")), 0o600)
	if _, err := Load(path, nil); err != nil {
		t.Fatal(err)
	}
}
