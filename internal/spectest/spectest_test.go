package spectest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// fakeTB records failures instead of failing the test.
type fakeTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
	fatal  bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Error(args ...any) { f.Errorf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	f.mu.Lock()
	f.fatal = true
	f.mu.Unlock()
}
func (f *fakeTB) Fatal(args ...any)               { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Log(args ...any)                 {}
func (f *fakeTB) Logf(format string, args ...any) {}

func (f *fakeTB) failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.errors...)
}

const (
	idv2 = "/_matrix/identity/v2"
	key  = "VXuGitF39UH5iRfvbIknlvlAVKgD1BsLDMvBf0pmp7c"
)

type tcase struct {
	name, method, path string
	status             int
	body               string
}

var good = []tcase{
	{"versions", "GET", "/_matrix/identity/versions", 200, `{"versions":["v1.1","v1.19"]}`},
	{"ping", "GET", "/_matrix/identity/v2", 200, `{}`},
	{"pubkey", "GET", idv2 + "/pubkey/ed25519:abc", 200, `{"public_key":"` + key + `"}`},
	{"pubkey escaped", "GET", idv2 + "/pubkey/ed25519%3Aabc", 200, `{"public_key":"` + key + `"}`},
	{"pubkey 404", "GET", idv2 + "/pubkey/ed25519:nope", 404, `{"errcode":"M_NOT_FOUND","error":"The public key was not found"}`},
	{"isvalid", "GET", idv2 + "/pubkey/isvalid?public_key=" + key, 200, `{"valid":true}`},
	{"ephemeral isvalid", "GET", idv2 + "/pubkey/ephemeral/isvalid?public_key=x", 200, `{"valid":false}`},
	{"register", "POST", idv2 + "/account/register", 200, `{"token":"abc123","access_token":"abc123"}`},
	{"account", "GET", idv2 + "/account", 200, `{"user_id":"@alice:example.org"}`},
	{"logout", "POST", idv2 + "/account/logout", 200, `{}`},
	{"terms", "GET", idv2 + "/terms", 200, `{"policies":{"privacy":{"version":"1.0","en":{"name":"Privacy","url":"https://id.example/privacy-1.0-en.html"}}}}`},
	{"terms empty", "GET", idv2 + "/terms", 200, `{"policies":{}}`},
	{"agree terms", "POST", idv2 + "/terms", 200, `{}`},
	{"hash_details", "GET", idv2 + "/hash_details?access_token=t", 200, `{"lookup_pepper":"pepper","algorithms":["none","sha256"]}`},
	{"lookup", "POST", idv2 + "/lookup", 200, `{"mappings":{"4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc":"@alice:example.org"}}`},
	{"lookup empty", "POST", idv2 + "/lookup", 200, `{"mappings":{}}`},
	{"lookup bad pepper", "POST", idv2 + "/lookup", 400, `{"errcode":"M_INVALID_PEPPER","error":"Unknown pepper","algorithm":"sha256","lookup_pepper":"p"}`},
	{"store-invite", "POST", idv2 + "/store-invite", 200, `{"token":"tok","display_name":"a...@e...","public_key":"` + key + `",
		"public_keys":[{"public_key":"` + key + `","key_validity_url":"https://id.example/_matrix/identity/v2/pubkey/isvalid"},
		{"public_key":"` + key + `","key_validity_url":"https://id.example/_matrix/identity/v2/pubkey/ephemeral/isvalid"}]}`},
	{"store-invite in use", "POST", idv2 + "/store-invite", 400, `{"errcode":"M_THREEPID_IN_USE","error":"Binding already known","mxid":"@alice:example.org"}`},
	{"store-invite terms", "POST", idv2 + "/store-invite", 403, `{"errcode":"M_TERMS_NOT_SIGNED","error":"Please accept our terms"}`},
	{"bind", "POST", idv2 + "/3pid/bind", 200, `{"address":"alice@example.org","medium":"email","mxid":"@alice:example.org",
		"not_before":1428825849161,"not_after":4582425849161,"ts":1428825849161,
		"signatures":{"id.example":{"ed25519:0":"ENiU2YORYUJgE6WBMitU0mppbQjidDLanAusj8XS2nVRHPu+0t42OKA/r6zV6i2MzUbNQ3c3MiLScJuSsOiVDQ"}}}`},
	{"unbind", "POST", idv2 + "/3pid/unbind", 200, `{}`},
	{"getValidated3pid", "GET", idv2 + "/3pid/getValidated3pid?sid=1&client_secret=s", 200, `{"medium":"email","address":"alice@example.org","validated_at":1624366925000}`},
	{"requestToken", "POST", idv2 + "/validate/email/requestToken", 200, `{"sid":"123abc"}`},
	{"submitToken", "POST", idv2 + "/validate/email/submitToken", 200, `{"success":true}`},
	{"submitToken GET html", "GET", idv2 + "/validate/email/submitToken?sid=1&token=t&client_secret=s", 200, `<html>ok</html>`},
	{"submitToken GET redirect", "GET", idv2 + "/validate/email/submitToken?sid=1&token=t&client_secret=s", 302, ``},
	{"submitToken GET 4xx html", "GET", idv2 + "/validate/email/submitToken?sid=1&token=t&client_secret=s", 400, `<html>no</html>`},
	{"submitToken GET 4xx json", "GET", idv2 + "/validate/email/submitToken?sid=1&token=t&client_secret=s", 400, `{"errcode":"M_TOKEN_INCORRECT","error":"no"}`},
	{"sign-ed25519", "POST", idv2 + "/sign-ed25519", 200, `{"mxid":"@alice:example.org","sender":"@bob:example.org","token":"tok",
		"signatures":{"id.example":{"ed25519:0":"sig"}}}`},
	{"onbind PUT", "PUT", "/_matrix/federation/v1/3pid/onbind", 200, `{}`},
	{"onbind POST", "POST", "/_matrix/federation/v1/3pid/onbind", 200, `{}`},
	// Errors: documented and undocumented statuses.
	{"400 bad json", "POST", idv2 + "/validate/email/requestToken", 400, `{"errcode":"M_BAD_JSON","error":"Bad JSON"}`},
	{"400 undocumented", "POST", idv2 + "/account/register", 400, `{"errcode":"M_MISSING_PARAMS","error":"missing"}`},
	{"401", "POST", idv2 + "/account/logout", 401, `{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`},
	{"401 undocumented", "POST", idv2 + "/lookup", 401, `{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`},
	{"403", "POST", idv2 + "/3pid/bind", 403, `{"errcode":"M_TERMS_NOT_SIGNED","error":"Terms"}`},
	{"404 route", "GET", idv2 + "/nowhere", 404, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`},
	{"405", "DELETE", idv2 + "/lookup", 405, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request: method not allowed"}`},
	{"429", "POST", idv2 + "/lookup", 429, `{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":1000}`},
	{"500", "POST", idv2 + "/store-invite", 500, `{"errcode":"M_UNKNOWN","error":"Internal server error"}`},
	// Outside the spec.
	{"v1 lookup", "GET", "/_matrix/identity/api/v1/lookup?medium=email&address=a", 200, `{}`},
	{"v1 anything", "POST", "/_matrix/identity/api/v1/store-invite", 200, `{"whatever":1}`},
	{"admin html error", "GET", "/_herald/admin/", 403, `<!doctype html><p>forbidden</p>`},
	{"admin json error", "POST", "/_herald/admin/invites", 404, `{"errcode":"M_NOT_FOUND","error":"no such invite"}`},
	{"options", "OPTIONS", idv2 + "/lookup", 204, ``},
	{"head", "HEAD", idv2 + "/hash_details", 401, ``},
}

var bad = []struct {
	tcase
	want []string // substrings of the failure message
}{
	{tcase{"versions not array", "GET", "/_matrix/identity/versions", 200, `{"versions":"v1.1"}`}, []string{"getVersions", "200", "/versions"}},
	{tcase{"versions item", "GET", "/_matrix/identity/versions", 200, `{"versions":["v1.1",2]}`}, []string{"/versions/1", "got number, want string"}},
	{tcase{"pubkey missing", "GET", idv2 + "/pubkey/ed25519:abc", 200, `{"key":"x"}`}, []string{"getPubKeyV2", "missing property 'public_key'"}},
	{tcase{"pubkey number", "GET", idv2 + "/pubkey/ed25519:abc", 200, `{"public_key":5}`}, []string{"getPubKeyV2", "status 200", "at /public_key"}},
	{tcase{"isvalid string", "GET", idv2 + "/pubkey/isvalid", 200, `{"valid":"true"}`}, []string{"isPubKeyValidV2", "at /valid"}},
	{tcase{"isvalid as keyId", "GET", idv2 + "/pubkey/isvalid", 200, `{"public_key":"x"}`}, []string{"isPubKeyValidV2", "valid"}},
	{tcase{"register no token", "POST", idv2 + "/account/register", 200, `{"access_token":"abc"}`}, []string{"registerAccount", "'token'"}},
	{tcase{"terms no version", "GET", idv2 + "/terms", 200, `{"policies":{"p":{"en":{"name":"n","url":"u"}}}}`}, []string{"getTerms", "/policies/p", "version"}},
	{tcase{"terms bad lang", "GET", idv2 + "/terms", 200, `{"policies":{"p":{"version":"1","en":{"name":"n"}}}}`}, []string{"/policies/p/en", "url"}},
	{tcase{"hash_details no pepper", "GET", idv2 + "/hash_details", 200, `{"algorithms":["sha256"]}`}, []string{"getHashDetails", "lookup_pepper"}},
	{tcase{"lookup mapping type", "POST", idv2 + "/lookup", 200, `{"mappings":{"h":["@a:b"]}}`}, []string{"lookupUsersV2", "/mappings/h"}},
	{tcase{"store-invite keys", "POST", idv2 + "/store-invite", 200, `{"token":"t","display_name":"d","public_keys":[{"public_key":"k"}]}`}, []string{"storeInviteV2", "/public_keys/0", "key_validity_url"}},
	{tcase{"bind missing mxid", "POST", idv2 + "/3pid/bind", 200, `{"address":"a","medium":"email"}`}, []string{"bindV2", "mxid"}},
	{tcase{"bind ts string", "POST", idv2 + "/3pid/bind", 200, `{"address":"a","medium":"email","mxid":"@a:b","ts":"1"}`}, []string{"bindV2", "at /ts"}},
	{tcase{"bind signature", "POST", idv2 + "/3pid/bind", 200, `{"address":"a","medium":"email","mxid":"@a:b","signatures":{"s":{"ed25519:0":1}}}`}, []string{"/signatures/s/ed25519:0"}},
	{tcase{"requestToken no sid", "POST", idv2 + "/validate/email/requestToken", 200, `{}`}, []string{"emailRequestTokenV2", "sid"}},
	{tcase{"sign-ed25519 no sender", "POST", idv2 + "/sign-ed25519", 200, `{"mxid":"@a:b","token":"t","signatures":{}}`}, []string{"blindlySignStuffV2", "'sender'"}},
	{tcase{"empty 200", "GET", idv2 + "/hash_details", 200, ``}, []string{"getHashDetails", "empty body"}},
	{tcase{"not json", "GET", idv2 + "/hash_details", 200, `pepper`}, []string{"getHashDetails", "not valid JSON"}},
	{tcase{"trailing data", "GET", idv2 + "/hash_details", 200, `{"lookup_pepper":"p","algorithms":[]} {}`}, []string{"not valid JSON"}},
	{tcase{"undocumented 2xx", "GET", "/_matrix/identity/versions", 201, `{"versions":[]}`}, []string{"getVersions", "201", "not documented"}},
	{tcase{"undocumented 204", "POST", idv2 + "/lookup", 204, ``}, []string{"lookupUsersV2", "204", "not documented"}},
	{tcase{"400 no errcode", "POST", idv2 + "/lookup", 400, `{"error":"bad"}`}, []string{"lookupUsersV2", "400", "errcode"}},
	{tcase{"401 no errcode", "POST", idv2 + "/account/logout", 401, `{"error":"bad"}`}, []string{"logout", "401", "errcode"}},
	{tcase{"401 undocumented plain", "POST", idv2 + "/lookup", 401, `Unauthorized`}, []string{"lookupUsersV2", "401", "not valid JSON"}},
	{tcase{"403 errcode number", "POST", idv2 + "/store-invite", 403, `{"errcode":403}`}, []string{"storeInviteV2", "403", "at /errcode"}},
	{tcase{"404 empty", "GET", idv2 + "/pubkey/ed25519:x", 404, ``}, []string{"getPubKeyV2", "404", "empty body"}},
	{tcase{"429 retry string", "POST", idv2 + "/lookup", 429, `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":"1000"}`}, []string{"429", "at /retry_after_ms"}},
	{tcase{"500 no errcode", "POST", idv2 + "/store-invite", 500, `{"message":"boom"}`}, []string{"storeInviteV2", "500", "errcode"}},
	{tcase{"outside spec json error", "GET", "/_matrix/identity/api/v1/pubkey/ed25519:0", 404, `{"message":"not found"}`}, []string{"not in the spec", "404", "errcode"}},
	{tcase{"outside spec 405", "PUT", idv2 + "/lookup", 405, `{"errcode":405}`}, []string{"405", "/errcode"}},
}

func TestValidateGood(t *testing.T) {
	needSpec(t)
	for _, c := range good {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeTB{}
			Validate(f, c.method, c.path, c.status, []byte(c.body))
			if errs := f.failures(); len(errs) > 0 {
				t.Errorf("%s %s %d: unexpected failure:\n%s", c.method, c.path, c.status, strings.Join(errs, "\n"))
			}
			// And with the real testing.T, which must stay green.
			Validate(t, c.method, c.path, c.status, []byte(c.body))
		})
	}
}

func TestValidateBad(t *testing.T) {
	needSpec(t)
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeTB{}
			Validate(f, c.method, c.path, c.status, []byte(c.body))
			errs := f.failures()
			if len(errs) != 1 {
				t.Fatalf("%s %s %d %s: want exactly one failure, got %d: %q", c.method, c.path, c.status, c.body, len(errs), errs)
			}
			t.Log(errs[0])
			for _, w := range c.want {
				if !strings.Contains(errs[0], w) {
					t.Errorf("failure message lacks %q:\n%s", w, errs[0])
				}
			}
		})
	}
}

func TestMessagesDoNotRepeatValues(t *testing.T) {
	// No identity response schema has a pattern or format assertion, so
	// check the message builder on a schema of our own.
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("mem:///s.json", map[string]any{
		"type": "object",
		"properties": map[string]any{
			"mxid":  map[string]any{"type": "string", "pattern": "^@"},
			"email": map[string]any{"type": "string", "format": "email"},
		},
	}); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("mem:///s.json")
	if err != nil {
		t.Fatal(err)
	}
	msg := validateBody("POST /x", 200, "test schema", sch, []byte(`{"mxid":"secret-token","email":"alice-at-example.org"}`))
	for _, want := range []string{"at /mxid", "pattern", "at /email", "email"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	for _, leak := range []string{"alice-at-example.org", "secret-token"} {
		if strings.Contains(msg, leak) {
			t.Errorf("message repeats a body value %q:\n%s", leak, msg)
		}
	}
}

func TestMatchPrefersLiteral(t *testing.T) {
	s := needSpec(t)
	for path, want := range map[string]string{
		idv2 + "/pubkey/isvalid":               "isPubKeyValidV2",
		idv2 + "/pubkey/isvalid/":              "isPubKeyValidV2",
		idv2 + "/pubkey/ed25519:0":             "getPubKeyV2",
		idv2 + "/pubkey/ephemeral/isvalid?x=1": "isEphemeralPubKeyValidV2",
		"/_matrix/identity/v2":                 "pingV2",
		"/_matrix/identity/versions":           "getVersions",
	} {
		op := s.match("GET", path)
		if op == nil || op.id != want {
			t.Errorf("match(GET %s) = %v, want %s", path, op, want)
		}
	}
	for _, path := range []string{idv2 + "/pubkey/", idv2 + "/pubkey/a/b", "/_matrix/identity/api/v1/pubkey/ed25519:0", "/_herald/admin"} {
		if op := s.match("GET", path); op != nil {
			t.Errorf("match(GET %s) = %v, want none", path, op)
		}
	}
	if op := s.match("PUT", "/_matrix/federation/v1/exchange_third_party_invite/!r:e"); op == nil || op.id != "exchangeThirdPartyInvite" {
		t.Errorf("exchange_third_party_invite: got %v", op)
	}
}

// TestAllIdentitySchemasCompile walks every operation of every file in
// data/api/identity (and the federation third-party invite file) on its own
// and checks each documented application/json response schema was compiled.
func TestAllIdentitySchemasCompile(t *testing.T) {
	s := needSpec(t)
	api := filepath.Join(s.dir, "data", "api")
	files, err := filepath.Glob(filepath.Join(api, "identity", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no identity spec files in %s: %v", api, err)
	}
	files = append(files, filepath.Join(api, "server-server", "third_party_invite.yaml"))
	known := map[string]bool{}
	for _, f := range specFiles {
		known[f] = true
	}
	total := 0
	for _, file := range files {
		rel, _ := filepath.Rel(api, file)
		rel = filepath.ToSlash(rel)
		if !known[rel] {
			t.Errorf("%s is not in specFiles: its operations would not be validated", rel)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Paths map[string]map[string]struct {
				OperationID string `yaml:"operationId"`
				Responses   map[string]struct {
					Content map[string]struct {
						Schema any `yaml:"schema"`
					} `yaml:"content"`
				} `yaml:"responses"`
			} `yaml:"paths"`
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		for p, item := range doc.Paths {
			for m, o := range item {
				if m == "parameters" || m == "summary" || m == "description" || m == "servers" {
					continue
				}
				var op *operation
				for _, cand := range s.ops {
					if cand.file == rel && cand.id == o.OperationID && strings.EqualFold(cand.method, m) && strings.HasSuffix(cand.template, p) {
						op = cand
					}
				}
				if op == nil {
					t.Errorf("%s: %s %s (%s) not loaded", rel, m, p, o.OperationID)
					continue
				}
				for code, r := range o.Responses {
					mt, ok := r.Content["application/json"]
					got := op.responses[strings.ToUpper(code)]
					switch {
					case got == nil:
						t.Errorf("%s: response %s not loaded", op, code)
					case ok && mt.Schema != nil && got.schema == nil:
						t.Errorf("%s: response %s schema not compiled", op, code)
					case ok && mt.Schema != nil:
						total++
					}
				}
			}
		}
	}
	if total < 40 {
		t.Errorf("only %d JSON response schemas compiled; expected the whole identity API (~50)", total)
	}
	t.Logf("%d operations, %d JSON response schemas", len(s.ops), total)
}

func TestBrokenRefFailsLoading(t *testing.T) {
	s := needSpec(t)
	dir := t.TempDir()
	err := filepath.Walk(s.dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.dir, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == filepath.Join("data", "api", "identity", "v2_store_invite.yaml") {
			b = []byte(strings.Replace(string(b), "../client-server/definitions/errors/error.yaml", "../client-server/definitions/errors/nope.yaml", 1))
		}
		return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := compile(dir); err == nil || !strings.Contains(err.Error(), "storeInviteV2") {
		t.Errorf("compile with a broken $ref: err = %v, want one naming storeInviteV2", err)
	}
	if _, err := compile(filepath.Join(dir, "missing")); err == nil {
		t.Error("compile of a missing folder succeeded")
	}
}

// needSpec returns the loaded spec for the tests of the validator itself,
// which cannot run without it. A fresh clone on its own has no spec: these
// tests then skip with the reason, unless CI=true, which requires the spec.
// (Every behaviour test elsewhere runs regardless; only its responses go
// unvalidated.)
func needSpec(t testing.TB) *spec {
	t.Helper()
	s, err := load()
	if err != nil {
		if errors.Is(err, errNoSpec) && !required() {
			t.Skipf("this test checks the validator against the Matrix spec, which is absent: %v", err)
		}
		t.Fatal(err)
	}
	return s
}

// resetLoad forgets the loaded spec and the printed note, so a test can load
// again under other variables; the cleanup forgets its result too.
func resetLoad(t *testing.T) {
	reset := func() {
		loadOnce, loadedSpec, loadErr = sync.Once{}, nil, nil
		noteOnce, noteOut = sync.Once{}, os.Stderr
	}
	reset()
	t.Cleanup(reset)
}

func TestSpecDirOverride(t *testing.T) {
	empty := t.TempDir()
	t.Setenv(SpecDirVar, empty)
	_, err := specDir()
	if err == nil || !strings.Contains(err.Error(), SpecDirVar) || !strings.Contains(err.Error(), empty) || errors.Is(err, errNoSpec) {
		t.Errorf("specDir with an empty %s: %v", SpecDirVar, err)
	}
	// Outside CI too, a variable naming no spec fails instead of skipping validation.
	t.Setenv("CI", "")
	resetLoad(t)
	f := &fakeTB{}
	Validate(f, "GET", "/_matrix/identity/versions", 200, []byte(`{}`))
	if errs := f.failures(); len(errs) != 1 || !strings.Contains(errs[0], empty) {
		t.Errorf("Validate with %s naming an empty folder: %q", SpecDirVar, errs)
	}
}

// A spec folder reached through a symbolic link loads, and is reported by
// its real path (so walking it, as TestBrokenRefFailsLoading does, works).
func TestSpecDirSymlink(t *testing.T) {
	s := needSpec(t)
	link := filepath.Join(t.TempDir(), "spec-link")
	if err := os.Symlink(s.dir, link); err != nil {
		t.Fatal(err)
	}
	t.Setenv(SpecDirVar, link)
	if d, err := specDir(); err != nil || d != s.dir {
		t.Errorf("specDir through a link = %q, %v; want %q", d, err, s.dir)
	}
	if _, err := compile(link); err != nil {
		t.Errorf("compile through a link: %v", err)
	}
}

// A fresh clone on its own (no ../shared/spec, no MATRIX_SPEC_DIR): every
// response passes, one line says they were not validated; with CI=true the
// missing spec fails the test instead.
func TestMissingSpec(t *testing.T) {
	root := t.TempDir()
	mod := filepath.Join(root, "herald")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(mod)
	t.Setenv(SpecDirVar, "")
	t.Setenv("CI", "")
	resetLoad(t)
	var note strings.Builder
	noteOut = &note
	bad := []byte(`{"versions":"not a list"}`)
	f := &fakeTB{}
	Validate(f, "GET", "/_matrix/identity/versions", 200, bad)
	Validate(f, "POST", idv2+"/lookup", 400, []byte(`{"error":"no errcode"}`))
	h := Handler(f, muxForTest())
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", idv2+"/hash_details", nil))
	_ = Transport(f, nil)
	if errs := f.failures(); len(errs) > 0 {
		t.Errorf("without the spec outside CI: %q", errs)
	}
	if strings.Count(note.String(), "\n") != 1 || !strings.Contains(note.String(), "not validated against the Matrix spec") {
		t.Errorf("note = %q, want one line saying responses were not validated", note.String())
	}

	t.Setenv("CI", "true")
	resetLoad(t)
	f = &fakeTB{}
	Validate(f, "GET", "/_matrix/identity/versions", 200, bad)
	if errs := f.failures(); len(errs) != 1 || !strings.Contains(errs[0], "shared/spec") || !strings.Contains(errs[0], SpecDirVar) {
		t.Errorf("with CI=true and no spec: %q, want one failure naming the spec folder", errs)
	}
}

func TestSpecDirFromModuleRoot(t *testing.T) {
	t.Setenv(SpecDirVar, "")
	root := t.TempDir()
	mod := filepath.Join(root, "repo")
	if err := os.MkdirAll(filepath.Join(mod, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(filepath.Join(mod, "a", "b"))
	_, err := specDir()
	want := filepath.Join(root, "shared", "spec")
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("specDir without the folder: %v, want an error naming %s", err, want)
	}
	if err := os.MkdirAll(filepath.Join(want, "data", "api", "identity"), 0o755); err != nil {
		t.Fatal(err)
	}
	if d, err := specDir(); err != nil || d != want {
		t.Errorf("specDir = %q, %v; want %q", d, err, want)
	}
}

func muxForTest() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/identity/versions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"versions":["v1.19"]}`)
	})
	mux.HandleFunc("GET /_matrix/identity/v2/hash_details", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"algorithms":["sha256"]}`) // lookup_pepper missing
	})
	mux.HandleFunc("GET /_matrix/identity/v2/pubkey/isvalid", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"valid":true}`) // no Content-Type: sniffed as text/plain
	})
	mux.HandleFunc("GET /_matrix/identity/v2/pubkey/{keyId}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"no key"}`)
	})
	mux.HandleFunc("GET /_herald/admin/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<p>forbidden</p>`)
	})
	mux.HandleFunc("POST /_matrix/identity/v2/lookup", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusUnauthorized) // text/plain error on a spec'd path
	})
	return mux
}

type exchange struct {
	method, path string
	wantFail     []string
}

var exchanges = []exchange{
	{"GET", "/_matrix/identity/versions", nil},
	{"GET", "/_matrix/identity/v2/pubkey/ed25519:0", nil},
	{"GET", "/_herald/admin/", nil},
	{"GET", "/_matrix/identity/v2/hash_details", []string{"getHashDetails", "lookup_pepper"}},
	{"GET", "/_matrix/identity/v2/pubkey/isvalid?public_key=k", []string{"isPubKeyValidV2", "Content-Type"}},
	{"POST", "/_matrix/identity/v2/lookup", []string{"lookupUsersV2", "401", "Content-Type"}},
}

func TestHandler(t *testing.T) {
	needSpec(t)
	for _, ex := range exchanges {
		f := &fakeTB{}
		h := Handler(f, muxForTest())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(ex.method, ex.path, strings.NewReader("{}")))
		checkExchange(t, ex, f.failures())
		if rec.Code == 0 || rec.Body.Len() == 0 {
			t.Errorf("%s %s: response not passed through (%d, %q)", ex.method, ex.path, rec.Code, rec.Body.String())
		}
	}
}

func TestTransport(t *testing.T) {
	needSpec(t)
	srv := httptest.NewServer(muxForTest())
	defer srv.Close()
	for _, ex := range exchanges {
		f := &fakeTB{}
		client := &http.Client{Transport: Transport(f, srv.Client().Transport)}
		req, err := http.NewRequest(ex.method, srv.URL+ex.path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(body) == 0 {
			t.Errorf("%s %s: body not passed through: %q %v", ex.method, ex.path, body, err)
		}
		checkExchange(t, ex, f.failures())
	}
}

func checkExchange(t *testing.T, ex exchange, errs []string) {
	t.Helper()
	if ex.wantFail == nil {
		if len(errs) > 0 {
			t.Errorf("%s %s: unexpected failures: %q", ex.method, ex.path, errs)
		}
		return
	}
	if len(errs) != 1 {
		t.Errorf("%s %s: want one failure, got %q", ex.method, ex.path, errs)
		return
	}
	for _, w := range ex.wantFail {
		if !strings.Contains(errs[0], w) {
			t.Errorf("%s %s: failure lacks %q: %s", ex.method, ex.path, w, errs[0])
		}
	}
}

func TestConcurrentValidate(t *testing.T) {
	needSpec(t)
	var wg sync.WaitGroup
	f := &fakeTB{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range good {
				Validate(f, c.method, c.path, c.status, []byte(c.body))
			}
		}()
	}
	wg.Wait()
	if errs := f.failures(); len(errs) > 0 {
		t.Errorf("concurrent validation failed: %q", errs)
	}
}

func BenchmarkValidate(b *testing.B) {
	needSpec(b)
	store := []byte(`{"token":"tok","display_name":"a...@e...","public_keys":[{"public_key":"k","key_validity_url":"https://x/_matrix/identity/v2/pubkey/isvalid"}]}`)
	b.ReportAllocs()
	for b.Loop() {
		Validate(b, "POST", idv2+"/store-invite", 200, store)
	}
}
