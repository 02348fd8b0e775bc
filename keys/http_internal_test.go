package keys

import (
	"net/url"
	"testing"
)

// queryUnescapeInto decodes what url.QueryUnescape decodes, to the same
// bytes, and refuses what it refuses.
func TestQueryUnescapeIntoAgrees(t *testing.T) {
	for _, v := range []string{
		"", "abc", "a%2Bb%2Fc", "a+b", "%41%4a%4A", "%", "%4", "%zz", "a%2", "%%41", "%C3%A9", "%00",
		url.QueryEscape("x+/y=="), "++", "%2B",
	} {
		checkQueryUnescape(t, v)
	}
}

func FuzzQueryUnescapeInto(f *testing.F) {
	for _, v := range []string{"a%2Bb", "a+b", "%zz", "%4"} {
		f.Add(v)
	}
	f.Fuzz(checkQueryUnescape)
}

func checkQueryUnescape(t *testing.T, v string) {
	buf := make([]byte, len(v))
	n, ok := queryUnescapeInto(buf, v)
	want, err := url.QueryUnescape(v)
	if ok != (err == nil) {
		t.Fatalf("%q: ok %v, QueryUnescape error %v", v, ok, err)
	}
	if ok && string(buf[:n]) != want {
		t.Fatalf("%q: %q, QueryUnescape %q", v, buf[:n], want)
	}
}
