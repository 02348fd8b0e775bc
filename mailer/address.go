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
