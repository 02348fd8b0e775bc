package identity

import (
	"errors"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"

	"github.com/herald-im/herald/internal/textnorm"
	"github.com/herald-im/herald/matrix"
)

// Length caps for an email address (RFC 5321 4.5.3.1, in bytes of UTF-8).
const (
	MaxEmailBytes      = 254
	MaxEmailLocalBytes = 64
)

// ErrInvalidEmail is what NormalizeEmail returns (wrapped in a *matrix.Error
// answering 400 M_INVALID_EMAIL).
var ErrInvalidEmail = errors.New("invalid email address")

var folder = cases.Fold()

// idnaDots are the full stops UTS #46 maps to "." (ideographic, fullwidth,
// halfwidth ideographic).
var idnaDots = strings.NewReplacer("\u3002", ".", "\uff0e", ".", "\uff61", ".")

func invalidEmail(why string) error {
	return matrix.InvalidEmail("%s", "Invalid email address: "+why)
}

// NormalizeEmail checks that addr is one bare email address (no display name,
// no angle brackets, no group, within the length caps) and returns it in the
// form Herald stores and looks up: the spec's normalisation, Unicode case
// folding of the whole address (which lower-cases the domain), so
// "Strauss@Example.com" becomes "strauss@example.com". The domain is then put
// in its canonical IDNA (UTS #46) Unicode form, so "x@ｂｌｏｃｋｅｄ。example"
// and "x@xn--mnchen-3ya.de" are stored as "x@blocked.example" and
// "x@münchen.de": one mailbox, one identity. Addresses holding control,
// format (zero-width, bidi), private-use or unassigned characters, or U+FFFD
// (what invalid UTF-8 decodes to), are refused: they would look like another
// address while being a distinct one. Surrounding spaces are trimmed. Errors
// are *matrix.Error values answering 400 M_INVALID_EMAIL.
func NormalizeEmail(addr string) (string, error) {
	if n, ok := normalizeSimpleEmail(addr); ok {
		return n, nil
	}
	return normalizeEmailFull(addr)
}

// normalizeEmailFull is NormalizeEmail for any input.
func normalizeEmailFull(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", invalidEmail("empty")
	}
	if !utf8.ValidString(addr) {
		return "", invalidEmail("not UTF-8")
	}
	for _, r := range addr {
		if textnorm.Refused(r) {
			return "", invalidEmail("contains an invisible, control or undecodable character")
		}
		if unicode.IsSpace(r) || r == '<' || r == '>' || r == ',' || r == ';' || r == '"' || r == '[' || r == ']' || r == '(' || r == ')' || r == '\\' {
			return "", invalidEmail("contains a character not allowed in a bare address")
		}
	}
	if len(addr) > MaxEmailBytes*2 {
		return "", invalidEmail("too long")
	}
	folded := folder.String(addr)
	if len(folded) > MaxEmailBytes {
		return "", invalidEmail("too long")
	}
	local, domain, ok := strings.Cut(folded, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") {
		return "", invalidEmail("needs exactly one @ with text on both sides")
	}
	if len(local) > MaxEmailLocalBytes {
		return "", invalidEmail("local part too long")
	}
	// UTS #46 treats these full stops as dots: check the labels they make.
	domain = idnaDots.Replace(domain)
	if strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") ||
		strings.HasPrefix(domain, "-") {
		return "", invalidEmail("malformed domain")
	}
	domain, err := textnorm.DomainUnicode(domain)
	if err != nil {
		return "", invalidEmail("malformed domain")
	}
	folded = local + "@" + domain
	if len(folded) > MaxEmailBytes {
		return "", invalidEmail("too long")
	}
	a, err := mail.ParseAddress(folded)
	if err != nil || a.Name != "" || a.Address != folded {
		return "", invalidEmail("not a single bare address")
	}
	return folded, nil
}

// normalizeSimpleEmail is NormalizeEmail's answer, found without its
// Unicode machinery, for the common address: ASCII, a dot-atom local part,
// and a domain of letter-digit-hyphen labels none of which is an IDNA
// A-label or has hyphens in its third and fourth places. Folding such an
// address is lower-casing it, and its domain is already IDNA's canonical
// form. ok is false for anything else (which NormalizeEmail then examines
// in full, valid or not). FuzzNormalizeSimpleEmail holds it to NormalizeEmail's answer.
func normalizeSimpleEmail(addr string) (string, bool) {
	if len(addr) == 0 || len(addr) > MaxEmailBytes {
		return "", false
	}
	at := strings.IndexByte(addr, '@')
	if at < 1 || at > MaxEmailLocalBytes || at == len(addr)-1 {
		return "", false
	}
	lower := true
	// The local part: dot-atom text (RFC 5322), no leading, trailing or
	// doubled dot.
	prev := byte('.')
	for i := 0; i < at; i++ {
		c := addr[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z':
			lower = false
		case c == '.':
			if prev == '.' {
				return "", false
			}
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return "", false
		}
		prev = c
	}
	if prev == '.' {
		return "", false
	}
	// The domain: labels of 1 to 63 letters, digits and inner hyphens.
	label := 0
	for i := at + 1; i <= len(addr); i++ {
		if i == len(addr) || addr[i] == '.' {
			start := i - label
			if label == 0 || label > 63 || addr[start] == '-' || addr[i-1] == '-' ||
				(label >= 4 && addr[start+2] == '-' && addr[start+3] == '-') {
				return "", false
			}
			label = 0
			continue
		}
		switch c := addr[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			lower = false
		default:
			return "", false
		}
		label++
	}
	if lower {
		return addr, true
	}
	return strings.ToLower(addr), true
}
