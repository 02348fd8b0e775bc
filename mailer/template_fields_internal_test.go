package mailer

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// The keys a template set reads are found in actions, conditions, ranges,
// {{with}}, $.key, chains and sub-templates; a template that may read any
// key ({{index . "x"}}, . handed on, $ alone) gives "any".
func TestTemplatesKnowTheKeysTheyRead(t *testing.T) {
	for _, c := range []struct {
		name, subject, text, html string
		want, wantSubject         []string // nil: any key
	}{
		{"plain", "{{.a}} {{.b | upper}}", "{{if .c}}{{.d}}{{else}}{{truncate 3 .e}}{{end}}", "",
			[]string{"a", "b", "c", "d", "e"}, []string{"a", "b"}},
		{"html and with", "x", "{{range .list}}{{.item}}{{$.top}}{{end}}",
			`{{define "f"}}<a href="{{.url}}">{{.label}}</a>{{end}}{{with .w}}{{.inner}}{{end}}{{template "f" .}}`,
			nil, []string{}},
		{"sub-template with a field", "x", "{{.t}}",
			`{{define "f"}}<b>{{.label}}</b>{{end}}{{template "f" .room}}{{(.chain).x}}`,
			[]string{"t", "label", "room", "chain"}, []string{}},
		{"index of the data", "{{.s}}", `{{index . "extra"}}`, "", nil, []string{"s"}},
		{"whole data", "{{printf \"%v\" $}}", "{{.t}}", "", nil, nil},
		{"variable", "{{$x := .s}}{{$x}}", "{{.t}}", "", []string{"s", "t"}, []string{"s"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			write := func(name, src string) {
				if src != "" {
					if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			write("k.subject.txt", c.subject)
			write("k.txt", c.text)
			write("k.html", c.html)
			tm, err := LoadTemplates(nil, dir, "k")
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, got fieldSet, want []string) {
				t.Helper()
				if want == nil {
					if got != nil {
						t.Errorf("%s: %v, want any key", what, keys(got))
					}
					return
				}
				if got == nil {
					t.Errorf("%s: any key, want %v", what, want)
					return
				}
				sort.Strings(want)
				if g := keys(got); !reflect.DeepEqual(g, want) {
					t.Errorf("%s: %v, want %v", what, g, want)
				}
			}
			check("all templates", tm.uses, c.want)
			check("subject", tm.subjectUses, c.wantSubject)
			if c.want != nil && (tm.Uses("not-read") || !tm.Uses(c.want[0])) {
				t.Errorf("Uses does not follow the set %v", c.want)
			}
		})
	}
}

func keys(s fieldSet) []string {
	out := []string{}
	for k := range s {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
