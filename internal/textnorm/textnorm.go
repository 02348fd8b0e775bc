// Package textnorm turns untrusted names and text into the one form Herald
// compares, stores and sends: domains and server names through IDNA (UTS #46),
// free text for keyword matching through NFKC case folding with format
// characters removed, and the checks that refuse or strip characters that make
// two strings look alike or reorder what a reader sees (bidi controls).
package textnorm

import (
	"errors"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// lookup is UTS #46 processing for lookup: fullwidth letters, ideographic full
// stops (U+3002) and upper case are mapped, disallowed code points refused.
var lookup = idna.Lookup

// ErrDomain is returned for a domain that IDNA processing refuses.
var ErrDomain = errors.New("not a valid domain name")

// DomainASCII returns d in its canonical ASCII form (UTS #46 mapped, then
// punycode, lower case, without a trailing dot): the form compared against
// blocklists and sent to SMTP servers. "ｂｌｏｃｋｅｄ。Example" and
// "blocked.example." both give "blocked.example"; "münchen.de" gives
// "xn--mnchen-3ya.de".
func DomainASCII(d string) (string, error) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	if d == "" {
		return "", ErrDomain
	}
	a, err := lookup.ToASCII(d)
	if err != nil {
		return "", ErrDomain
	}
	a = strings.TrimSuffix(strings.ToLower(a), ".")
	if a == "" || len(a) > 253 || strings.Contains(a, "..") || strings.HasPrefix(a, ".") {
		return "", ErrDomain
	}
	return a, nil
}

// DomainUnicode returns d in its canonical Unicode form (UTS #46 mapped, any
// punycode label decoded, lower case): the form Herald stores in an address,
// so one mailbox written two ways is one identity.
func DomainUnicode(d string) (string, error) {
	a, err := DomainASCII(d)
	if err != nil {
		return "", err
	}
	u, err := lookup.ToUnicode(a)
	if err != nil {
		return "", ErrDomain
	}
	return u, nil
}

// ServerName reduces a Matrix server name ("Bad.Test:8448", "bad.test.",
// "[::1]:8448") to the host it names, for blocklist matching: port and
// trailing dot removed, lower-cased, IDNA ASCII form. A name IDNA refuses is
// returned lower-cased without port, so it still matches itself exactly.
func ServerName(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		if i := strings.IndexByte(s, ']'); i > 0 {
			return strings.ToLower(s[1:i])
		}
	}
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 && strings.Count(s, ":") == 1 {
		s = s[:i] // "host:" or "host:junk"
	}
	if a, err := DomainASCII(s); err == nil {
		return a
	}
	return strings.TrimSuffix(strings.ToLower(s), ".")
}

var fold = cases.Fold()

// Keyword is text in the form keyword blocklists compare: format characters
// (zero-width spaces and joiners, bidi controls, soft hyphens) removed, then
// NFKC case folding (fullwidth and compatibility forms to their plain
// letters, case folded), with runs of white space made one space.
func Keyword(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, s)
	// NFKC_Casefold: NFKC, fold, NFKC again (folding can denormalise).
	s = norm.NFKC.String(fold.String(norm.NFKC.String(s)))
	return strings.Join(strings.Fields(s), " ")
}

// Refused reports whether r must not appear in an identifier such as an
// email address: control, format (zero-width, bidi controls), private-use and
// surrogate code points, unassigned code points, and U+FFFD, which is what
// invalid UTF-8 decodes to.
func Refused(r rune) bool {
	return r == utf8.RuneError || r == '\u2028' || r == '\u2029' || !unicode.In(r, allowed...)
}

// allowed are the general categories an identifier may use: letters, marks,
// numbers, punctuation, symbols and spaces; every control, format, private-use,
// surrogate and unassigned code point is outside them.
var allowed = []*unicode.RangeTable{unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Zs}

// IsBidiControl reports whether r is an explicit bidirectional formatting
// character (embeddings, overrides, isolates and the marks), which can make
// text display in another order than it is written ("U+202E" turns
// "exe.txt" around).
func IsBidiControl(r rune) bool {
	switch {
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069',
		r == '\u200e', r == '\u200f', r == '\u061c':
		return true
	}
	return false
}

// StripBidi removes bidi controls from s, so text an inviter chose (room and
// display names) cannot reorder the sentence it is put in.
func StripBidi(s string) string {
	if !strings.ContainsFunc(s, IsBidiControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if IsBidiControl(r) {
			return -1
		}
		return r
	}, s)
}
