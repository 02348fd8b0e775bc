package invites

import (
	"encoding/json"
	"testing"
)

// FuzzJSONString: the fast path of jsonString agrees with encoding/json on
// every valid JSON value.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\"b"`, `"é"`, `"\u0041"`, `null`, ` null `, `1`, `""`, `"a\\"`, "\"\x7f\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		var got, want string
		gotErr := jsonString(raw, &got)
		var wantErr error
		if string(raw) == "null" {
			want = ""
		} else {
			wantErr = json.Unmarshal(raw, &want)
		}
		if (gotErr == nil) != (wantErr == nil) || got != want {
			t.Fatalf("%q: got %q %v, encoding/json %q %v", raw, got, gotErr, want, wantErr)
		}
	})
}
