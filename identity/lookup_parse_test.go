package identity

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParseLookupFast: whenever the fast lookup decoder accepts a body,
// encoding/json decodes it to the same request.
func FuzzParseLookupFast(f *testing.F) {
	for _, s := range []string{
		`{"algorithm":"sha256","pepper":"p","addresses":["a","b"]}`,
		` { "addresses" : [ ] , "pepper":"" ,"algorithm":"none"} `,
		`{"addresses":["x y"],"algorithm":"sha256","pepper":"p","addresses":[]}`,
		`{"Algorithm":"sha256"}`, `{"algorithm":null}`, `{"algorithm":"a\u0041"}`, `{"algorithm":"é"}`,
		`{"algorithm":"a"} x`, `{"addresses":["a",]}`, `{}`, `{"pepper":"p",}`, "{\"pepper\":\"\x7f\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := parseLookupFast(body)
		if !ok {
			return
		}
		var slow lookupRequest
		if err := json.Unmarshal(body, &slow); err != nil {
			t.Fatalf("fast decoder accepted %q, encoding/json refuses it: %v", body, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", body, fast, slow)
		}
	})
}
