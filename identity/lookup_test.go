package identity_test

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/testenv"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

func bindAll(t testing.TB, e *testenv.Env, pairs ...string) {
	t.Helper()
	id := e.App.Identity()
	err := id.DB().Update(func(tx *store.Tx) error {
		for i := 0; i+1 < len(pairs); i += 2 {
			if err := id.PutBinding(tx, identity.Binding{Medium: "email", Address: pairs[i], MXID: pairs[i+1]}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func lookup(t testing.TB, e *testenv.Env, tok string, body any) (int, map[string]any) {
	t.Helper()
	status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/lookup", body, tok)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("lookup answer %s: %v", raw, err)
	}
	return status, m
}

func TestLookupSpecVectors(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@looker:hs.test")
	if err := e.App.Identity().SetPepper("matrixrocks"); err != nil {
		t.Fatal(err)
	}
	bindAll(t, e, "Alice@Example.com", "@alice:example.org")

	status, raw := e.Do(t, http.MethodGet, "/_matrix/identity/v2/hash_details", nil, tok)
	var hd struct {
		Algorithms []string `json:"algorithms"`
		Pepper     string   `json:"lookup_pepper"`
	}
	json.Unmarshal(raw, &hd)
	if status != 200 || hd.Pepper != "matrixrocks" || len(hd.Algorithms) != 2 {
		t.Fatalf("hash_details: %d %s", status, raw)
	}
	// Synapse sends the token in the query string only.
	if status, raw := e.Do(t, http.MethodGet, "/_matrix/identity/v2/hash_details?access_token="+tok, nil, ""); status != 200 {
		t.Errorf("hash_details with ?access_token: %d %s", status, raw)
	}

	status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": "matrixrocks",
		"addresses": []string{"4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc", "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8", "garbage", ""}})
	mappings, _ := m["mappings"].(map[string]any)
	if status != 200 || len(mappings) != 1 || mappings["4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"] != "@alice:example.org" {
		t.Errorf("sha256 lookup: %d %v", status, m)
	}
	status, m = lookup(t, e, tok, map[string]any{"algorithm": "none", "pepper": "matrixrocks",
		"addresses": []string{"alice@example.com email", "ALICE@example.com email", "bob@example.com email", "nospace"}})
	mappings, _ = m["mappings"].(map[string]any)
	if status != 200 || len(mappings) != 2 || mappings["alice@example.com email"] != "@alice:example.org" {
		t.Errorf("none lookup: %d %v", status, m)
	}
	status, m = lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": "matrixrocks", "addresses": []string{}})
	if status != 200 || fmt.Sprint(m["mappings"]) != "map[]" {
		t.Errorf("empty lookup: %d %v", status, m)
	}
}

func TestLookupErrors(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) {
		c.Terms.Policies = map[string]config.Policy{"tos": {Version: "1", Languages: map[string]config.PolicyLanguage{"en": {Name: "ToS", URL: "https://herald.test/tos"}}}}
	})
	unsigned := e.Register(t, "@u:hs.test")
	tok := e.Register(t, "@looker:hs.test")
	e.AcceptTerms(t, tok)
	pepper, _, _ := e.App.Identity().Pepper()
	if len(pepper) < 24 {
		t.Errorf("pepper %q shorter than 24 characters", pepper)
	}
	cases := []struct {
		name   string
		tok    string
		body   any
		status int
		code   string
	}{
		{"no token", "", map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{}}, 401, "M_UNAUTHORIZED"},
		{"terms", unsigned, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{}}, 403, "M_TERMS_NOT_SIGNED"},
		{"not json", tok, "nope", 400, "M_NOT_JSON"},
		{"no algorithm", tok, map[string]any{"pepper": pepper, "addresses": []string{}}, 400, "M_MISSING_PARAMS"},
		{"no pepper", tok, map[string]any{"algorithm": "sha256", "addresses": []string{}}, 400, "M_MISSING_PARAMS"},
		{"no addresses", tok, map[string]any{"algorithm": "sha256", "pepper": pepper}, 400, "M_MISSING_PARAMS"},
		{"wrong type", tok, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": "x"}, 400, "M_BAD_JSON"},
		{"unknown algorithm", tok, map[string]any{"algorithm": "md5", "pepper": pepper, "addresses": []string{}}, 400, "M_INVALID_PARAM"},
		{"stale pepper", tok, map[string]any{"algorithm": "sha256", "pepper": "old", "addresses": []string{}}, 400, "M_INVALID_PEPPER"},
		{"none needs the pepper too", tok, map[string]any{"algorithm": "none", "pepper": "", "addresses": []string{}}, 400, "M_INVALID_PEPPER"},
	}
	for _, c := range cases {
		status, m := lookup(t, e, c.tok, c.body)
		if status != c.status || m["errcode"] != c.code {
			t.Errorf("%s: %d %v, want %d %s", c.name, status, m, c.status, c.code)
		}
		if c.code == "M_INVALID_PEPPER" && (m["pepper"] != pepper || m["algorithm"] != "sha256" || m["lookup_pepper"] != pepper) {
			t.Errorf("%s: M_INVALID_PEPPER without the current algorithm and pepper: %v", c.name, m)
		}
	}
}

func TestPepperRotation(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) { c.Lookup.PepperRotation = config.Duration(time.Hour) })
	tok := e.Register(t, "@looker:hs.test")
	bindAll(t, e, "carol@example.org", "@carol:hs.test")
	id := e.App.Identity()
	hashDetails := func() string {
		status, raw := e.Do(t, http.MethodGet, "/_matrix/identity/v2/hash_details", nil, tok)
		var hd struct {
			Pepper string `json:"lookup_pepper"`
		}
		json.Unmarshal(raw, &hd)
		if status != 200 {
			t.Fatalf("hash_details %d %s", status, raw)
		}
		return hd.Pepper
	}
	found := func(pepper string) (int, bool) {
		status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": pepper,
			"addresses": []string{identity.LookupHash("carol@example.org", "email", pepper)}})
		mp, _ := m["mappings"].(map[string]any)
		return status, len(mp) == 1
	}
	p1 := hashDetails()
	if hashDetails() != p1 {
		t.Fatal("pepper changed without rotation")
	}
	if st, ok := found(p1); st != 200 || !ok {
		t.Fatalf("lookup with p1: %d %v", st, ok)
	}
	// On demand.
	if err := id.RotatePepper(); err != nil {
		t.Fatal(err)
	}
	p2 := hashDetails()
	if p2 == p1 {
		t.Fatal("RotatePepper kept the pepper")
	}
	if st, _ := found(p1); st != 400 {
		t.Errorf("old pepper still accepted: %d", st)
	}
	if st, ok := found(p2); st != 200 || !ok {
		t.Errorf("index not rebuilt for the new pepper: %d %v", st, ok)
	}
	// On the configured period: hash_details rotates once it is due.
	e.Clock.Advance(30 * time.Minute)
	if hashDetails() != p2 {
		t.Error("rotated before the period")
	}
	e.Clock.Advance(31 * time.Minute)
	p3 := hashDetails()
	if p3 == p2 {
		t.Error("not rotated after the period")
	}
	if st, ok := found(p3); st != 200 || !ok {
		t.Errorf("lookup after periodic rotation: %d %v", st, ok)
	}
	// The pepper survives a restart; bindings made after rotation and
	// deleted ones are indexed right.
	bindAll(t, e, "dave@example.org", "@dave:hs.test")
	id.DB().Update(func(tx *store.Tx) error { return id.DeleteBinding(tx, "email", "Carol@example.org") })
	e.Restart(t)
	if hashDetails() != p3 {
		t.Error("pepper lost on restart")
	}
	if _, ok := found(p3); ok {
		t.Error("deleted binding still found")
	}
	status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": p3,
		"addresses": []string{identity.LookupHash("dave@example.org", "email", p3)}})
	if mp, _ := m["mappings"].(map[string]any); status != 200 || len(mp) != 1 {
		t.Errorf("new binding after rotation: %d %v", status, m)
	}
}

func TestBindHooksRunInTheSameTransaction(t *testing.T) {
	e := testenv.Start(t)
	id := e.App.Identity()
	var seen []identity.Binding
	id.OnBind(func(tx *store.Tx, b identity.Binding) error {
		seen = append(seen, b)
		if b.MXID == "@refused:hs.test" {
			return fmt.Errorf("hook refuses")
		}
		return nil
	})
	bindAll(t, e, "Hooked@Example.org", "@ok:hs.test")
	if len(seen) != 1 || seen[0].Address != "hooked@example.org" || seen[0].TS.IsZero() || !seen[0].NotAfter.After(seen[0].TS) {
		t.Errorf("hook saw %+v", seen)
	}
	err := id.DB().Update(func(tx *store.Tx) error {
		return id.PutBinding(tx, identity.Binding{Medium: "email", Address: "other@example.org", MXID: "@refused:hs.test"})
	})
	if err == nil {
		t.Fatal("a failing hook did not abort the bind")
	}
	if b, _ := id.BindingFor("email", "other@example.org"); b != nil {
		t.Error("binding kept although its hook failed")
	}
	if b, _ := id.BindingFor("email", "HOOKED@example.org"); b == nil || b.MXID != "@ok:hs.test" {
		t.Errorf("BindingFor = %+v", b)
	}
}

func TestLookupV1(t *testing.T) {
	e := testenv.Start(t, func(c *config.Config) { c.Compat.V1 = true })
	bindAll(t, e, "v1@example.org", "@v1:hs.test")
	status, raw := e.Do(t, http.MethodGet, "/_matrix/identity/api/v1/lookup?medium=email&address="+url.QueryEscape("V1@Example.org"), nil, "")
	if status != 200 {
		t.Fatalf("%d %s", status, raw)
	}
	var assoc map[string]json.RawMessage
	json.Unmarshal(raw, &assoc)
	var got struct {
		Address, Medium, MXID string
		NotBefore             int64 `json:"not_before"`
		NotAfter              int64 `json:"not_after"`
		TS                    int64 `json:"ts"`
	}
	json.Unmarshal(raw, &got)
	if got.Address != "v1@example.org" || got.Medium != "email" || got.MXID != "@v1:hs.test" || got.TS == 0 || got.NotAfter <= got.TS {
		t.Errorf("association %s", raw)
	}
	// Dendrite verifies it with the key from /pubkey/{keyId}.
	k := e.App.Ring().Current()
	status, praw := e.Do(t, http.MethodGet, "/_matrix/identity/api/v1/pubkey/"+url.PathEscape(k.ID), nil, "")
	var pk struct {
		PublicKey string `json:"public_key"`
	}
	json.Unmarshal(praw, &pk)
	pub, _ := keys.DecodeBase64(pk.PublicKey)
	if status != 200 || keys.VerifyJSON(assoc, "herald.test", k.ID, ed25519.PublicKey(pub)) != nil {
		t.Errorf("association signature does not verify: %d %s", status, praw)
	}

	status, raw = e.Do(t, http.MethodGet, "/_matrix/identity/api/v1/lookup?medium=email&address=nobody@example.org", nil, "")
	if status != 200 || string(raw) != "{}\n" {
		t.Errorf("unbound: %d %q", status, raw)
	}
	status, raw = e.Do(t, http.MethodGet, "/_matrix/identity/api/v1/lookup?medium=email", nil, "")
	if status != 400 {
		t.Errorf("missing address: %d %s", status, raw)
	}

	status, raw = e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/bulk_lookup",
		map[string]any{"threepids": [][]string{{"email", "v1@example.org"}, {"email", "nobody@example.org"}}}, "")
	var bulk struct {
		Threepids [][]string `json:"threepids"`
	}
	json.Unmarshal(raw, &bulk)
	if status != 200 || len(bulk.Threepids) != 1 || fmt.Sprint(bulk.Threepids[0]) != "[email v1@example.org @v1:hs.test]" {
		t.Errorf("bulk_lookup: %d %s", status, raw)
	}
	for _, body := range []any{map[string]any{}, map[string]any{"threepids": [][]string{{"email"}}}, "x"} {
		if status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/api/v1/bulk_lookup", body, ""); status != 400 {
			t.Errorf("bulk_lookup %v: %d %s", body, status, raw)
		}
	}
}

func TestLookupThousandAddresses(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@looker:hs.test")
	var pairs []string
	for i := 0; i < 500; i++ {
		pairs = append(pairs, fmt.Sprintf("user%d@example.org", i), fmt.Sprintf("@u%d:hs.test", i))
	}
	bindAll(t, e, pairs...)
	pepper, _, _ := e.App.Identity().Pepper()
	addrs := make([]string, 1000)
	for i := range addrs {
		addrs[i] = identity.LookupHash(fmt.Sprintf("user%d@example.org", i), "email", pepper)
	}
	status, m := lookup(t, e, tok, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": addrs})
	mp, _ := m["mappings"].(map[string]any)
	if status != 200 || len(mp) != 500 || mp[addrs[7]] != "@u7:hs.test" {
		t.Errorf("1000-address lookup: %d, %d mappings", status, len(mp))
	}
}

// An address asked twice (or in another base64 spelling of the same hash)
// is answered once each: the answer has no duplicate keys.
func TestLookupRepeatedAddresses(t *testing.T) {
	e := testenv.Start(t)
	tok := e.Register(t, "@looker:hs.test")
	bindAll(t, e, "a@example.org", "@a:hs.test", "b@example.org", "@b:hs.test")
	pepper, _, _ := e.App.Identity().Pepper()
	ha := identity.LookupHash("a@example.org", "email", pepper)
	hb := identity.LookupHash("b@example.org", "email", pepper)
	// The last character carries 2 unused bits: flip one for another spelling.
	alt := ha[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", ha[42])^1])
	for _, none := range []bool{false, true} {
		body := map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{ha, hb, ha, alt, "nope", ha}}
		if none {
			body = map[string]any{"algorithm": "none", "pepper": pepper, "addresses": []string{"a@example.org email", "a@example.org email", "b@example.org email"}}
		}
		status, raw := e.Do(t, http.MethodPost, "/_matrix/identity/v2/lookup", body, tok)
		if status != 200 {
			t.Fatalf("status %d: %s", status, raw)
		}
		if n := strings.Count(string(raw), `"@a:hs.test"`); n != map[bool]int{false: 2, true: 1}[none] {
			t.Errorf("none=%v: @a answered %d times: %s", none, n, raw)
		}
		if n := strings.Count(string(raw), `"@b:hs.test"`); n != 1 {
			t.Errorf("none=%v: @b answered %d times: %s", none, n, raw)
		}
	}
}
