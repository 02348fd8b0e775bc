package identity_test

import (
	"strings"
	"testing"

	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/matrix"
)

func TestNormalizeEmail(t *testing.T) {
	good := map[string]string{
		"Strauss@Example.com":                    "strauss@example.com",
		"  alice@example.org ":                   "alice@example.org",
		"STRASSE@EXAMPLE.DE":                     "strasse@example.de",
		"Straße@example.de":                      "strasse@example.de", // full case folding
		"ΣΊΣΥΦΟΣ@example.gr":                     "σίσυφοσ@example.gr",
		"a.b+tag@sub.Example.ORG":                "a.b+tag@sub.example.org",
		"user@localhost":                         "user@localhost",
		"o'brien@example.ie":                     "o'brien@example.ie",
		strings.Repeat("a", 64) + "@example.org": strings.Repeat("a", 64) + "@example.org",
		// One mailbox, one identity: the domain in its IDNA (UTS #46) form.
		"x@ｂｌｏｃｋｅｄ.example":   "x@blocked.example",
		"x@blocked。example":   "x@blocked.example",
		"x@BLOCKED．example":   "x@blocked.example",
		"x@xn--mnchen-3ya.de": "x@münchen.de",
		"x@MÜNCHEN.de":        "x@münchen.de",
		"jörg@münchen.de":     "jörg@münchen.de",
	}
	for in, want := range good {
		got, err := identity.NormalizeEmail(in)
		if err != nil || got != want {
			t.Errorf("NormalizeEmail(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		"", " ", "alice", "@example.org", "alice@", "a@b@c", "Alice <alice@example.org>", "<alice@example.org>",
		"a@example.org, b@example.org", "a b@example.org", "a@exa mple.org", "a\r\n@example.org",
		"a@.example.org", "a@example..org", "a@example.org.", "a@[127.0.0.1]", `"quoted"@example.org`,
		"a@-example.org", strings.Repeat("a", 65) + "@example.org", "a@" + strings.Repeat("b", 250) + ".org",
		"a(comment)@example.org", "a@example.org;b", "\xff@example.org",
		// Invisible, bidi and undecodable characters make a look-alike but
		// distinct identity: refused.
		"a\u200b@example.org", "admin@exam\u200bple.org", "\u202egro.elpmaxe@a", "a@example.org\u202e",
		"a\u2066b@example.org", "a\u00ad@example.org", "a\ufeff@example.org", "\ufffd@example.org",
		"a\ue000@example.org", "a@example\u200d.org", "a@example。", "a@。example.org",
		"a@xn--zz.example", "a@exa_mple.org",
	}
	for _, in := range bad {
		got, err := identity.NormalizeEmail(in)
		me, ok := matrix.AsError(err)
		if !ok || me.Code != "M_INVALID_EMAIL" || me.Status != 400 {
			t.Errorf("NormalizeEmail(%q) = %q, %v; want M_INVALID_EMAIL", in, got, err)
		}
	}
}

func TestLookupHashSpecVectors(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"alice@example.com", "email"}: "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc",
		{"bob@example.com", "email"}:   "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8",
		{"18005552067", "msisdn"}:      "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I",
	} {
		if got := identity.LookupHash(in[0], in[1], "matrixrocks"); got != want {
			t.Errorf("LookupHash(%v) = %s, want %s", in, got, want)
		}
	}
}

// NormalizeEmail's output is what Herald stores and looks up, so it must be
// a fixed point (normalising it again changes nothing) and free of the
// characters NormalizeEmail refuses.
func FuzzNormalizeEmail(f *testing.F) {
	for _, s := range []string{"Strauss@Example.com", "x@ｂｌｏｃｋｅｄ。example", "jörg@MÜNCHEN.de", "x@xn--mnchen-3ya.de",
		"Straße@faß.de", "ΣΊΣΥΦΟΣ@example.gr", "a\u200b@example.org", "a@exa\u0301mple.org", "ǅ@ǆ.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := identity.NormalizeEmail(in)
		if err != nil {
			return
		}
		again, err := identity.NormalizeEmail(out)
		if err != nil || again != out {
			t.Fatalf("NormalizeEmail(%q) = %q, but NormalizeEmail(%q) = %q, %v", in, out, out, again, err)
		}
		for _, r := range out {
			if r == '\ufffd' || r == '\u200b' || r == '\u202e' {
				t.Fatalf("NormalizeEmail(%q) = %q keeps %U", in, out, r)
			}
		}
	})
}
