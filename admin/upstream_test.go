package admin_test

import (
	"strings"
	"testing"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/upstream"
)

// The settings page shows the upstream identity servers' status read-only,
// and their access tokens masked like every secret.
func TestSettingsShowUpstreams(t *testing.T) {
	e := newEnv(t, func(o *admin.Options) {
		o.Config.Lookup.Upstream = []config.Upstream{{BaseURL: "https://matrix.example", HomeserverURL: "https://hs.example",
			UserID: "@herald:hs.example", AccessToken: "syt_upstream_secret"}}
		o.Upstreams = func() []upstream.Status {
			return []upstream.Status{{BaseURL: "https://matrix.example", State: "M_TERMS_NOT_SIGNED", Calls: 7, Hits: 2, Failures: 5,
				LastError: "M_TERMS_NOT_SIGNED: the upstream has terms of service and accept_terms is not set for it"}}
		}
	})
	c := e.client()
	c.login(testUser, testPassword)
	_, body := c.get("/admin/settings")
	for _, want := range []string{"Upstream identity servers", "<code>https://matrix.example</code>", "M_TERMS_NOT_SIGNED",
		`<td data-label="Lookups">7</td>`, `<td data-label="Hits">2</td>`, `<td data-label="Failures">5</td>`, "lookup.upstream[0].base_url"} {
		if !strings.Contains(body, want) {
			t.Errorf("settings page lacks %q", want)
		}
	}
	_, api := c.api("GET", "/admin/api/settings", testToken, "")
	if !strings.Contains(api, `"upstreams":[{"base_url":"https://matrix.example","state":"M_TERMS_NOT_SIGNED"`) {
		t.Errorf("settings API lacks the upstreams: %s", api)
	}
	for _, b := range []string{body, api} {
		if strings.Contains(b, "syt_upstream_secret") {
			t.Fatal("the upstream access token is shown")
		}
	}
}

// Without upstreams the block is absent.
func TestSettingsWithoutUpstreams(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.login(testUser, testPassword)
	if _, body := c.get("/admin/settings"); strings.Contains(body, "Upstream identity servers") {
		t.Fatal("upstream block shown without upstreams")
	}
}
