package identity

import (
	"strings"
	"testing"
)

// FuzzNormalizeSimpleEmail: whatever the fast path accepts, NormalizeEmail's
// full path (Unicode folding, IDNA, net/mail) accepts too, with the same
// answer; and the fast path takes the common addresses.
func FuzzNormalizeSimpleEmail(f *testing.F) {
	for _, s := range []string{
		"alice@example.org", "Strauss@Example.com", "a.b+tag@sub.Example.ORG", "user@localhost",
		"o'brien@example.ie", "x@xn--mnchen-3ya.de", "a@ab--cd.example", "a@-x.org", "a@x-.org",
		"a..b@x.org", ".a@x.org", "a.@x.org", "a@1.2.3.4", "a@x..org", "a@x.org.", "a@.x.org",
		"a!#$%&'*+-/=?^_`{|}~@x.org", strings.Repeat("a", 64) + "@x.org", strings.Repeat("a", 65) + "@x.org",
		"a@" + strings.Repeat("b", 63) + ".org", "a@" + strings.Repeat("b", 64) + ".org", "A@B", " a@b.c",
		"a@b_c.org", "a\"b@x.org", "a@x.org\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		fast, ok := normalizeSimpleEmail(addr)
		if !ok {
			return
		}
		full, err := normalizeEmailFull(addr)
		if err != nil || full != fast {
			t.Fatalf("%q: fast path %q, full path %q, %v", addr, fast, full, err)
		}
	})
}

func TestNormalizeSimpleEmailTakesTheCommonAddresses(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.org": "alice@example.org", "Strauss@Example.com": "strauss@example.com",
		"si-7cf2f876-64-1@bench.test": "si-7cf2f876-64-1@bench.test", "a.b+tag@sub.example.org": "a.b+tag@sub.example.org",
	} {
		if got, ok := normalizeSimpleEmail(in); !ok || got != want {
			t.Errorf("normalizeSimpleEmail(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"x@xn--mnchen-3ya.de", "jörg@example.org", " a@b.c", `"q"@x.org`, "a@ab--cd.org"} {
		if _, ok := normalizeSimpleEmail(in); ok {
			t.Errorf("normalizeSimpleEmail(%q) took it: it is the full path's", in)
		}
	}
}
