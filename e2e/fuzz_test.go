package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/testenv"
)

// FuzzBindingHandlers sends any body (or query) to requestToken,
// submitToken, getValidated3pid, bind, unbind (also X-Matrix signed) and
// their v1 forms, and the invitee's decline and opt-out pages: the answer
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
		for op := range uint8(12) {
			f.Add(op, seed)
		}
	}
	f.Fuzz(func(t *testing.T, op uint8, input string) {
		var method, path string
		var body any = input
		var header string
		switch op % 12 {
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
		case 8: // unbind with a fuzzed X-Matrix authorization (no access token);
			// the origin is pinned to the test homeserver so no key fetch leaves 127.0.0.1
			method, path, header = "POST", "/_matrix/identity/v2/3pid/unbind", "X-Matrix "+headerSafe(input)+",origin=hs.test"
			body = `{"mxid":"@bob:hs.test","threepid":{"medium":"email","address":"b@c.example"}}`
		case 9:
			method, path, body = "GET", "/_herald/invites/decline?"+queryFrom(input), nil
		case 10:
			method, path, body = "POST", "/_herald/invites/decline", nil
		case 11:
			method, path, body = "POST", "/_herald/invites/optout", nil
		}
		var status int
		var raw []byte
		if header != "" || op%12 >= 10 {
			var rd io.Reader = strings.NewReader(fmt.Sprint(body))
			if body == nil {
				rd = strings.NewReader(queryFrom(input))
			}
			req, _ := http.NewRequest(method, env.URL+path, rd)
			if header != "" {
				req.Header.Set("Authorization", header)
			} else {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			resp := env.DoRequest(t, req)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status, raw = resp.StatusCode, b
		} else {
			status, raw = env.Do(t, method, path, body, tok)
		}
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

// headerSafe drops what an HTTP client refuses to send in a header value.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r > 0x7e {
			return -1
		}
		return r
	}, s)
}
