package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
)

// FuzzBindingHandlers sends any body (or query) to requestToken,
// submitToken, getValidated3pid, bind, unbind and their v1 forms: the answer
// is never a 5xx, every error is a Matrix error, and every answer validates
// against the spec (testenv checks that).
func FuzzBindingHandlers(f *testing.F) {
	env := testenv.Start(f, func(c *config.Config) { c.Compat.V1 = true })
	tok := env.Register(f, alice)
	for _, seed := range []string{
		`{"client_secret":"abc","email":"a@b.example","send_attempt":1}`,
		`{"client_secret":"abc","email":"a@b.example","send_attempt":"2","next_link":"javascript:x"}`,
		`{"sid":"x","client_secret":"y","token":"z"}`,
		`{"sid":"x","client_secret":"y","mxid":"@alice:hs.test"}`,
		`{"mxid":"@bob:hs.test","threepid":{"medium":"email","address":"b@c.example"}}`,
		`{"mxid":"@bob:hs.test","threepid":{"medium":"msisdn","address":"1"},"sid":"a","client_secret":"b"}`,
		`{"threepid":null}`, `[]`, `{`, ``, `{"send_attempt":1e400}`, `{"email":"\u0000@x"}`,
		`sid=a&client_secret=b&token=c`,
	} {
		for op := range uint8(8) {
			f.Add(op, seed)
		}
	}
	f.Fuzz(func(t *testing.T, op uint8, input string) {
		var method, path string
		var body any = input
		switch op % 8 {
		case 0:
			method, path = "POST", reqTokenPath
		case 1:
			method, path = "POST", submitPath
		case 2:
			method, path, body = "GET", submitPath+"?"+queryFrom(input), nil
		case 3:
			method, path, body = "GET", "/_matrix/identity/v2/3pid/getValidated3pid?"+queryFrom(input), nil
		case 4:
			method, path = "POST", "/_matrix/identity/v2/3pid/bind"
		case 5:
			method, path = "POST", "/_matrix/identity/v2/3pid/unbind"
		case 6:
			method, path = "POST", "/_matrix/identity/api/v1/3pid/bind"
		case 7:
			method, path = "POST", "/_matrix/identity/api/v1/validate/email/requestToken"
		}
		status, raw := env.Do(t, method, path, body, tok)
		if status >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, input, status, raw)
		}
		if status >= 400 && !strings.HasPrefix(string(raw), "<") {
			var e struct {
				Errcode string `json:"errcode"`
				Error   string `json:"error"`
			}
			if err := json.Unmarshal(raw, &e); err != nil || !strings.HasPrefix(e.Errcode, "M_") {
				t.Fatalf("%s %s %q: %d malformed error %s", method, path, input, status, raw)
			}
		}
		if status == http.StatusOK && method == "POST" && !json.Valid(raw) {
			t.Fatalf("%s %s: 200 with invalid JSON %s", method, path, raw)
		}
	})
}

// queryFrom turns fuzz input into a query: JSON object keys become
// parameters, anything else is used as a raw query string.
func queryFrom(input string) string {
	var m map[string]any
	if json.Unmarshal([]byte(input), &m) == nil {
		q := url.Values{}
		for k, v := range m {
			if s, ok := v.(string); ok {
				q.Set(k, s)
			}
		}
		return q.Encode()
	}
	return url.PathEscape(input)
}
