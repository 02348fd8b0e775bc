package textnorm

import "testing"

func TestServerName(t *testing.T) {
	for in, want := range map[string]string{
		"bad.test":           "bad.test",
		"BAD.test:8448":      "bad.test",
		"bad.test.":          "bad.test",
		"bad.test.:443":      "bad.test",
		"x.Bad.Test:1":       "x.bad.test",
		"ｂａｄ。test":           "bad.test",
		"bücher.test:8448":   "xn--bcher-kva.test",
		"xn--bcher-kva.test": "xn--bcher-kva.test",
		"[::1]:8448":         "::1",
		"[2001:DB8::1]":      "2001:db8::1",
		"1.2.3.4:8448":       "1.2.3.4",
		"under_score.test:1": "under_score.test", // IDNA refuses it: still matched exactly
	} {
		if got := ServerName(in); got != want {
			t.Errorf("ServerName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDomainForms(t *testing.T) {
	for in, want := range map[string][2]string{
		"Example.ORG":       {"example.org", "example.org"},
		"ｂｌｏｃｋｅｄ.example":   {"blocked.example", "blocked.example"},
		"MÜNCHEN.de":        {"xn--mnchen-3ya.de", "münchen.de"},
		"xn--mnchen-3ya.de": {"xn--mnchen-3ya.de", "münchen.de"},
		"blocked。example.":  {"blocked.example", "blocked.example"},
	} {
		a, err := DomainASCII(in)
		u, err2 := DomainUnicode(in)
		if err != nil || err2 != nil || a != want[0] || u != want[1] {
			t.Errorf("DomainASCII/Unicode(%q) = %q, %q (%v, %v); want %q, %q", in, a, u, err, err2, want[0], want[1])
		}
	}
	for _, in := range []string{"", ".", "a..b", "exa mple.org", "xn--zz.example", "-a.example"} {
		if a, err := DomainASCII(in); err == nil {
			t.Errorf("DomainASCII(%q) = %q, want an error", in, a)
		}
	}
}

func TestKeyword(t *testing.T) {
	for in, want := range map[string]string{
		"Free Crypto":                   "free crypto",
		"free\u200b crypto":             "free crypto",
		"FRE\u00adE cry\u202ept\u202co": "free crypto",
		"ＦＲＥＥ　ＣＲＹＰＴＯ":                   "free crypto",
		"Straße":                        "strasse",
		"\ufb01nance":                   "finance", // the "fi" ligature
		"  free \n\t crypto ":           "free crypto",
	} {
		if got := Keyword(in); got != want {
			t.Errorf("Keyword(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRefused(t *testing.T) {
	for _, r := range []rune{0, '\n', 0x7f, 0x85, '\u200b', '\u200d', '\u202e', '\u2066', '\ufeff', '\u00ad', '\ufffd', '\ue000', 0x10ffff, '\u2028'} {
		if !Refused(r) {
			t.Errorf("Refused(%U) = false", r)
		}
	}
	for _, r := range []rune{'a', 'é', 'ß', 'Σ', '字', '+', '\'', '.', '😀'} {
		if Refused(r) {
			t.Errorf("Refused(%U) = true", r)
		}
	}
}

func TestStripBidi(t *testing.T) {
	if got := StripBidi("Tea \u202egpj.exe\u202c \u2067x\u2069\u200e\u200f\u061c"); got != "Tea gpj.exe x" {
		t.Errorf("StripBidi = %q", got)
	}
}
