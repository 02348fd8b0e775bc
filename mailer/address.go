package mailer

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"github.com/herald-im/herald/internal/textnorm"
)

// ErrNeedsSMTPUTF8 is why a mail to an address with a non-ASCII local part
// fails when the SMTP server does not offer SMTPUTF8 (RFC 6531): no other
// encoding of such an address exists, so retrying cannot help.
var ErrNeedsSMTPUTF8 = errors.New("the address has a non-ASCII local part and the SMTP server does not offer SMTPUTF8")

// EnvelopeAddress returns addr as it goes to SMTP: the domain in IDNA ASCII
// form (punycode, "jörg@münchen.de" -> "jörg@xn--mnchen-3ya.de"), which every
// server accepts. utf8 reports a non-ASCII local part, which only a server
// offering SMTPUTF8 can take.
func EnvelopeAddress(addr string) (out string, utf8 bool, err error) {
	addr = strings.TrimSpace(addr)
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", false, fmt.Errorf("mailer: %q is not an address", addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if !isASCII(domain) {
		if domain, err = textnorm.DomainASCII(domain); err != nil {
			return "", false, fmt.Errorf("mailer: the domain of the address is not a valid IDNA name")
		}
	}
	return local + "@" + domain, !isASCII(local), nil
}

// headerAddress is addr for the To header: with an ASCII local part, the
// domain in punycode, so the header is plain ASCII; a non-ASCII local part
// can only travel with SMTPUTF8, where UTF-8 headers are allowed (RFC 6532).
func headerAddress(addr string) string {
	addr = strings.TrimSpace(addr)
	if simpleAddrSpec(addr) {
		return "<" + addr + ">" // what the lines below give it
	}
	if a, utf8, err := EnvelopeAddress(addr); err == nil && !utf8 {
		addr = a
	}
	return (&mail.Address{Address: addr}).String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// simpleAddrSpec reports whether addr is local@domain, each a dot-atom of
// ASCII atext (RFC 5322 3.2.3): nearly every address. mail.ParseAddress
// gives such an address back as it is, without a display name, and
// mail.Address.String gives "<addr>" (FuzzSimpleAddrSpecMatchesNetMail);
// Compose checks it this way first, as ParseAddress is a third of its CPU.
func simpleAddrSpec(addr string) bool {
	at := strings.IndexByte(addr, '@')
	return at > 0 && dotAtom(addr[:at]) && dotAtom(addr[at+1:])
}

func dotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if s[i-1] == '.' {
				return false
			}
			continue
		}
		if !atext[c] {
			return false
		}
	}
	return true
}

// atext marks RFC 5322's ASCII atext: printable ASCII but the specials.
var atext = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = !strings.ContainsRune(`()<>[]:;@\,."`, c)
	}
	return t
}()
