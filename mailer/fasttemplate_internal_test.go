package mailer

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

// fastSources are templates of the shape fastTemplate handles: text, values
// in HTML text, an RCDATA title, quoted attributes, whole URLs and URL
// parts, and if/else with and, or and not.
var fastSources = fstest.MapFS{
	"k.subject.txt": {Data: []byte("{{.a}} invited you{{if .flag}} to {{.b}}{{end}}")},
	"k.txt":         {Data: []byte("Hi {{.a}},\n{{if and .a .b}}{{.b}}{{else if .c}}{{.c}}{{else}}none{{end}}\n{{.url}} {{.flag}}\n")},
	"k.html": {Data: []byte(`<!DOCTYPE html><html><head><title>{{.a}} – {{.b}}</title></head><body>
<p title="{{.a}}" class='{{.b}}'>{{.a}}{{if .flag}} <b>{{.b}}</b>{{else}}{{.c}}{{end}}{{if and .a .b}} ({{.b}}){{end}}{{if or .c .flag}}x{{end}}{{if not .flag}}n{{end}}</p>
<a href="{{.url}}">{{.url}}</a> <a href="https://x.example/?q={{.a}}&amp;r={{.b}}#{{.c}}">q</a> <a href='{{.url}}'>s</a>
<img src="/p/{{.c}}" alt="{{.flag}}"><!-- a comment {{.a}} -->
</body></html>
`)},
}

// slowSources need html/template's other escapers (script, style, unquoted
// attributes) or text/template's functions: they are always executed.
var slowSources = fstest.MapFS{
	"k.subject.txt": {Data: []byte("{{truncate 20 .a}}")},
	"k.txt":         {Data: []byte("{{range .list}}{{.}}{{end}}{{with .a}}{{.}}{{end}}")},
	"k.html":        {Data: []byte(`<a href={{.url}} onclick="f({{.a}})"><script>var b = {{.b}};</script><style>p{color:{{.c}}}</style>`)},
}

func loadPair(t testing.TB, src fstest.MapFS) (fast, slow *Templates) {
	t.Helper()
	fast, err := LoadTemplates(src, "", "k")
	if err != nil {
		t.Fatal(err)
	}
	slow, err = LoadTemplates(src, "", "k")
	if err != nil {
		t.Fatal(err)
	}
	slow.slow = true
	return fast, slow
}

// FuzzFastTemplateMatchesTemplate: for any values, Render gives what
// executing the templates gives (html/template's own escaping), the same
// error for a missing key (missingkey=error), and the fast way is taken
// for templates of its shape.
func FuzzFastTemplateMatchesTemplate(f *testing.F) {
	f.Add("Alice", "Tea & Cake", "", "https://app.example.org/#/room/!r:x?email=a%40b&x=y", true, uint8(0))
	f.Add("<script>alert(1)</script>", "O'Brien \"+\" \x00 é", "ü%zz%41", "javascript:alert(1)", false, uint8(0))
	f.Add("", "b", "c", "HTTPS://x/y z", false, uint8(1))
	f.Add("a", "", "c", "mailto:a@b", true, uint8(2))
	f.Add("a", "b", "", "/rel/path?a=1&b=2", false, uint8(3))
	f.Add("a", "b", "c", "data:text/html,x", true, uint8(4))
	f.Add("\xff\xfe invalid", "\ufdd0\uffff", "\t\n\r", "x/y:z", false, uint8(5))
	f.Add("a", "b", "c", "u", false, uint8(6))
	fast, slow := loadPair(f, fastSources)
	sfast, sslow := loadPair(f, slowSources)
	// Herald's own invite templates (the invites package fills them).
	inviteFS := os.DirFS("../invites/templates")
	ifast, err := LoadTemplates(inviteFS, "", "invite")
	if err != nil {
		f.Fatal(err)
	}
	islow, err := LoadTemplates(inviteFS, "", "invite")
	if err != nil {
		f.Fatal(err)
	}
	islow.slow = true
	f.Fuzz(func(t *testing.T, a, b, c, url string, flag bool, drop uint8) {
		data := map[string]any{"a": a, "b": b, "c": c, "url": url, "flag": flag, "list": []string{a, b}}
		switch drop {
		case 1, 2, 3, 4, 5:
			delete(data, []string{"a", "b", "c", "url", "flag"}[drop-1])
		case 6:
			data["b"] = 42 // not a string: executed
		}
		for k, v := range map[string]string{"inviter_name": a, "room_display": b, "brand": c, "inviter_full": a + b,
			"room_name": b, "room_alias": c, "join_url": url, "decline_url": url + a, "optout_url": c + url,
			"sender": a, "homeserver": c, "to": b} {
			data[k] = v
		}
		data["room_named"], data["room_is_space"] = flag, a == ""
		for _, p := range [][2]*Templates{{fast, slow}, {sfast, sslow}, {ifast, islow}} {
			got, gerr := p[0].Render(data)
			want, werr := p[1].Render(data)
			if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
				t.Fatalf("error %v, want %v", gerr, werr)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("rendered\n%+v\nwant\n%+v", got, want)
			}
			if gerr == nil {
				gs, gerr := p[0].RenderSubject(data)
				ws, werr := p[1].RenderSubject(data)
				if gs != ws || (gerr == nil) != (werr == nil) {
					t.Fatalf("subject %q %v, want %q %v", gs, gerr, ws, werr)
				}
			}
		}
		if fast.subjectFast == nil || fast.textFast == nil || fast.htmlFast.Load() == nil && fast.htmlFastDone.Load() {
			t.Fatal("templates of the fast shape are executed")
		}
		if ifast.subjectFast == nil || ifast.textFast == nil || ifast.htmlFast.Load() == nil && ifast.htmlFastDone.Load() {
			t.Fatal("the invite templates are executed")
		}
		if sfast.subjectFast != nil || sfast.textFast != nil || sfast.htmlFast.Load() != nil {
			t.Fatal("templates the fast way cannot handle are not executed")
		}
	})
}

// TestFastTemplateMissingKey: a misspelt key is still missingkey=error's
// error, from the fast templates as from the executed ones.
func TestFastTemplateMissingKey(t *testing.T) {
	fast, _ := loadPair(t, fastSources)
	_, err := fast.Render(map[string]any{"a": "x", "b": "y", "c": "z", "flag": true})
	if err == nil || !strings.Contains(err.Error(), `map has no entry for key "url"`) {
		t.Fatalf("err = %v, want missingkey's error", err)
	}
	if fast.textFast == nil {
		t.Fatal("text template not fast")
	}
}

// TestFastTemplateConcurrentFirstRender: renders from several goroutines
// while the html template is first escaped and its fastTemplate compiled
// (run with -race), all with the same result.
func TestFastTemplateConcurrentFirstRender(t *testing.T) {
	fast, slow := loadPair(t, fastSources)
	data := map[string]any{"a": "A&", "b": "<b>", "c": "c", "url": "https://x/?a=b", "flag": true}
	want, err := slow.Render(data)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 20 {
				got, err := fast.Render(data)
				if err == nil && !reflect.DeepEqual(got, want) {
					err = fmt.Errorf("rendered %+v, want %+v", got, want)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if fast.htmlFast.Load() == nil {
		t.Fatal("the html template is not fast after rendering")
	}
}
