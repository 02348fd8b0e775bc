package mailer

import (
	"fmt"
	"regexp"
	"strings"
)

// sydentSyntax finds what Go's template parser would pass through as text
// but sydent rendered: legacy %(name)s substitutions and Jinja2 {% ... %}
// tags and {# ... #} comments. (Jinja's {{ name }} is already a parse error.)
var sydentSyntax = regexp.MustCompile(`%\([A-Za-z_][A-Za-z0-9_]*\)s|\{%-?\s*\w+[^%]*%\}|\{#.*?#\}`)

// refuseSydentSyntax fails for a template still written for sydent: sent
// as is, it would mail "%(token)s" instead of the invite's token. The
// error names the file, the line and the construct; `herald import sydent
// --templates` converts such templates.
func refuseSydentSyntax(src, from string) error {
	loc := sydentSyntax.FindStringIndex(src)
	if loc == nil {
		return nil
	}
	line := strings.Count(src[:loc[0]], "\n") + 1
	return fmt.Errorf("mailer: template %s line %d: %q is sydent template syntax, which Herald does not render; convert the template with `herald import sydent --templates` (docs/migrating-from-sydent.md)", from, line, src[loc[0]:loc[1]])
}

func pyQuote(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

var pyEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#x27;")
