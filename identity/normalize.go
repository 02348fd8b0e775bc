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
