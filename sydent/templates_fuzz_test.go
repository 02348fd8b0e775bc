package sydent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/herald-im/herald/mailer"
)

// FuzzConvert: whatever the template, a conversion that reports no problem
// gives a template Herald loads (it parses, and holds nothing Herald would
// refuse as sydent syntax), for both the legacy and the Jinja2 converter.
func FuzzConvert(f *testing.F) {
	for _, seed := range []string{
		"To: %(to)s\nSubject: %(subject_header_value)s\n\nHi %(sender_display_name_forhtml)s, 100%% {{x}}\n",
		"To: {{ to }}\n\n{% if room_name %}{{ room_name|e }}{% else %}a room{% endif %} {# c #} %(token)s {{- x -}}\n",
		"{%- if room_type == \"m.space\" -%}space{%- elif not room_name %}x{% endif %}{{ token|urlencode }}",
		"%(", "{#", "{%", "{{", "}}", "%%(x)s", "{{\"{{\"}}",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	cfg := &Config{Values: map[string]string{}}
	f.Fuzz(func(t *testing.T, src string, jinja bool) {
		conv := &Conversion{}
		c := &converter{kind: "invite", file: "fuzz", cfg: cfg, conv: conv, boundary: "b"}
		var out string
		if jinja {
			out = c.jinja(src)
		} else {
			out = c.legacy(src)
		}
		if len(conv.Problems) > 0 {
			return
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "invite.eml"), []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := mailer.LoadTemplates(nil, dir, "invite"); err != nil {
			t.Fatalf("converted without a reported problem, but Herald refuses it: %v\nsource %q\nconverted %q", err, src, out)
		}
	})
}
