package mailer

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	htmltemplate "html/template"
	"io/fs"
	"net/mail"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	texttemplate "text/template"
	"time"
	"unicode/utf8"
)

// Templates renders one kind of mail ("invite", "validation", ...) from
//
//	KIND.subject.txt  text/template, one line (surrounding space trimmed)
//	KIND.txt          text/template, the text/plain part
//	KIND.html         html/template, the text/html part (optional)
//
// or from one KIND.eml: a complete RFC 5322 message (headers, blank line,
// body; MIME structure is up to the author) as a text/template, which
// replaces the three. This is how sydent operators bring their templates.
// text/template does not escape, so in a .eml template:
//
//   - every value placed in a header must go through {{header .x}} (refuses
//     CR/LF, so a value cannot add a header) or {{encodeHeader .x}} (the
//     same, then RFC 2047-encoded when not ASCII: use it for Subject);
//   - values placed in an HTML part go through {{html .x}}, and in URLs
//     through {{urlquery .x}} (standard text/template functions).
//
// All templates also have {{truncate N s}} (cut to N runes with "…") and
// {{lower s}} / {{upper s}}. Missing map keys are errors, so Check with
// sample data at start-up catches misspelt variables.
type Templates struct {
	kind    string
	files   []string
	subject *texttemplate.Template
	text    *texttemplate.Template
	html    *htmltemplate.Template
	raw     *texttemplate.Template
	// version is a hash of the sources loaded (Version).
	version uint32
	// uses and subjectUses are the data keys the templates read (nil: any
	// key; see Uses).
	uses, subjectUses fieldSet
	// fast are the templates' fastTemplates (nil for one that needs
	// executing); the html one is compiled from the escaped tree once the
	// template has been executed (htmlFast, htmlFastDone).
	subjectFast, textFast, rawFast *fastTemplate
	htmlFast                       atomic.Pointer[fastTemplate]
	htmlFastDone                   atomic.Bool
	// slow makes every render execute the templates (tests compare).
	slow bool
}

// Funcs shared by every template.
var tmplFuncs = map[string]any{
	"header": func(v any) (string, error) {
		s := fmt.Sprint(v)
		if strings.ContainsAny(s, "\r\n\x00") {
			return "", errors.New("header value contains a line break")
		}
		return s, nil
	},
	"encodeHeader": func(v any) (string, error) {
		s := fmt.Sprint(v)
		if strings.ContainsAny(s, "\r\n\x00") {
			return "", errors.New("header value contains a line break")
		}
		return encodeWord(s), nil
	},
	"truncate": func(n int, v any) string {
		s := fmt.Sprint(v)
		if n < 1 || utf8.RuneCountInString(s) <= n {
			return s
		}
		return string([]rune(s)[:n-1]) + "…"
	},
	"lower": func(v any) string { return strings.ToLower(fmt.Sprint(v)) },
	"upper": func(v any) string { return strings.ToUpper(fmt.Sprint(v)) },

	// pyquote is Python's urllib.parse.quote (what sydent's _forurl
	// values are): every byte but letters, digits, "_.-~" and "/"
	// percent-encoded, so templates converted from sydent give its output.
	"pyquote": func(v any) string { return pyQuote(fmt.Sprint(v)) },
	// pyescape is Python's html.escape (sydent's _forhtml values): & < > " '
	// as &amp; &lt; &gt; &quot; &#x27;.
	"pyescape": func(v any) string { return pyEscape.Replace(fmt.Sprint(v)) },
}

// LoadTemplates parses the templates for kind: each file present in
// overrideDir ("" for none) replaces the one in defaults (which may be nil).
// A KIND.eml in overrideDir replaces everything; one in defaults is used only
// if neither overrideDir nor defaults has KIND.subject.txt or KIND.txt. A
// missing or broken template is an error naming the file.
func LoadTemplates(defaults fs.FS, overrideDir, kind string) (*Templates, error) {
	if kind == "" || strings.ContainsAny(kind, `/\`) {
		return nil, fmt.Errorf("mailer: bad template kind %q", kind)
	}
	t := &Templates{kind: kind}
	// find returns the file's text and where it came from, or "" if absent.
	find := func(name string) (string, string, error) {
		if overrideDir != "" {
			p := filepath.Join(overrideDir, name)
			b, err := os.ReadFile(p)
			if err == nil {
				return string(b), p, nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return "", "", fmt.Errorf("mailer: template %s: %w", p, err)
			}
		}
		if defaults != nil {
			b, err := fs.ReadFile(defaults, name)
			if err == nil {
				return string(b), "embedded:" + name, nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return "", "", fmt.Errorf("mailer: template embedded:%s: %w", name, err)
			}
		}
		return "", "", nil
	}
	// Every source loaded goes into the set's Version.
	sum := fnv.New32a()
	defer func() { t.version = sum.Sum32() }()
	findFile := find
	find = func(name string) (string, string, error) {
		src, from, err := findFile(name)
		if from != "" {
			fmt.Fprintf(sum, "%s\x00%d\x00%s", name, len(src), src)
		}
		return src, from, err
	}
	inOverride := func(name string) bool {
		if overrideDir == "" {
			return false
		}
		_, err := os.Stat(filepath.Join(overrideDir, name))
		return err == nil
	}
	inDefaults := func(name string) bool {
		if defaults == nil {
			return false
		}
		_, err := fs.Stat(defaults, name)
		return err == nil
	}

	emlName := kind + ".eml"
	useRaw := inOverride(emlName) ||
		(inDefaults(emlName) && !inOverride(kind+".subject.txt") && !inOverride(kind+".txt") &&
			!inDefaults(kind+".subject.txt") && !inDefaults(kind+".txt"))
	if useRaw {
		src, from, err := find(emlName)
		if err != nil {
			return nil, err
		}
		if err := refuseSydentSyntax(src, from); err != nil {
			return nil, err
		}
		tt, err := texttemplate.New(path.Base(from)).Funcs(tmplFuncs).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, fmt.Errorf("mailer: template %s: %w", from, err)
		}
		t.raw, t.files = tt, []string{from}
		t.rawFast = compileFast(tt.Tree)
		t.uses = collectFields(textTrees(tt))
		return t, nil
	}

	for _, f := range []struct {
		name     string
		required bool
	}{{kind + ".subject.txt", true}, {kind + ".txt", true}, {kind + ".html", false}} {
		src, from, err := find(f.name)
		if err != nil {
			return nil, err
		}
		if from == "" {
			if f.required {
				return nil, fmt.Errorf("mailer: template %s is missing (neither in %q nor embedded)", f.name, overrideDir)
			}
			continue
		}
		if err := refuseSydentSyntax(src, from); err != nil {
			return nil, err
		}
		t.files = append(t.files, from)
		if strings.HasSuffix(f.name, ".html") {
			ht, err := htmltemplate.New(f.name).Funcs(tmplFuncs).Option("missingkey=error").Parse(src)
			if err != nil {
				return nil, fmt.Errorf("mailer: template %s: %w", from, err)
			}
			t.html = ht
			continue
		}
		tt, err := texttemplate.New(f.name).Funcs(tmplFuncs).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, fmt.Errorf("mailer: template %s: %w", from, err)
		}
		if strings.HasSuffix(f.name, ".subject.txt") {
			t.subject = tt
		} else {
			t.text = tt
		}
	}
	t.subjectFast, t.textFast = compileFast(t.subject.Tree), compileFast(t.text.Tree)
	t.subjectUses = collectFields(textTrees(t.subject))
	t.uses = collectFields(append(textTrees(t.subject, t.text), htmlTrees(t.html)...))
	return t, nil
}

// Files lists the template files in use ("embedded:NAME" or a path), for the
// start-up log and the settings page.
func (t *Templates) Files() []string { return append([]string(nil), t.files...) }

// IsRaw reports whether a KIND.eml template is in use.
func (t *Templates) IsRaw() bool { return t.raw != nil }

// Version is a hash of the template sources in use: it changes when an
// operator changes a template. A mail rendered at send time records the
// version it was queued with, so a change in between is noticed.
func (t *Templates) Version() uint32 { return t.version }

// RenderSubject renders the subject alone, as Render does; not for a .eml
// template (IsRaw), whose subject is part of the message.
func (t *Templates) RenderSubject(data any) (string, error) {
	if t.raw != nil {
		return "", errors.New("mailer: a .eml template has no subject template")
	}
	var b bytes.Buffer
	if err := t.execText(&b, t.subject, t.subjectFast, data); err != nil {
		return "", fmt.Errorf("mailer: render %s.subject.txt: %w", t.kind, err)
	}
	subject := strings.TrimSpace(b.String())
	if err := checkSubject(subject); err != nil {
		return "", fmt.Errorf("mailer: render %s.subject.txt: %w", t.kind, err)
	}
	return CapSubject(subject), nil
}

// renderBufs holds the buffers templates execute into: a rendered part
// (several KB) grew its buffer by doubling, about four times its size in
// garbage per part, for every mail sent. A part's string is copied out at
// its exact size.
var renderBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Render fills Subject, Text and HTML (or Raw, with a .eml template) and Kind;
// the caller sets To, Ref and Headers. A subject with a line break is an error.
func (t *Templates) Render(data any) (Message, error) {
	m := Message{Kind: t.kind}
	b := renderBufs.Get().(*bytes.Buffer)
	b.Reset()
	defer func() {
		if b.Cap() <= 1<<20 { // an unusually large mail's buffer is left to the collector
			renderBufs.Put(b)
		}
	}()
	if t.raw != nil {
		if err := t.execText(b, t.raw, t.rawFast, data); err != nil {
			return m, fmt.Errorf("mailer: render %s: %w", t.files[0], err)
		}
		raw := toCRLF(bytes.TrimLeft(b.Bytes(), "\r\n"))
		if _, err := mail.ReadMessage(bytes.NewReader(raw)); err != nil {
			return m, fmt.Errorf("mailer: render %s: not an RFC 5322 message: %w", t.files[0], err)
		}
		m.Raw = raw
		return m, nil
	}
	if err := t.execText(b, t.subject, t.subjectFast, data); err != nil {
		return m, fmt.Errorf("mailer: render %s.subject.txt: %w", t.kind, err)
	}
	subject := strings.TrimSpace(b.String())
	if err := checkSubject(subject); err != nil {
		return m, fmt.Errorf("mailer: render %s.subject.txt: %w", t.kind, err)
	}
	m.Subject = CapSubject(subject)
	b.Reset()
	if err := t.execText(b, t.text, t.textFast, data); err != nil {
		return m, fmt.Errorf("mailer: render %s.txt: %w", t.kind, err)
	}
	m.Text = b.String()
	if t.html != nil {
		b.Reset()
		if err := t.execHTML(b, data); err != nil {
			return m, fmt.Errorf("mailer: render %s.html: %w", t.kind, err)
		}
		m.HTML = b.String()
	}
	return m, nil
}

// execText executes tt (whose fastTemplate is fast, or nil) with data into
// b, which is empty.
func (t *Templates) execText(b *bytes.Buffer, tt *texttemplate.Template, fast *fastTemplate, data any) error {
	if fast != nil && !t.slow {
		if fast.exec(b, data) {
			return nil
		}
		b.Reset()
	}
	return tt.Execute(b, data)
}

// execHTML executes the html template with data into b, which is empty.
// html/template escapes the template when it is first executed: its
// fastTemplate is compiled from the escaped tree after that.
func (t *Templates) execHTML(b *bytes.Buffer, data any) error {
	if fast := t.htmlFast.Load(); fast != nil && !t.slow {
		if fast.exec(b, data) {
			return nil
		}
		b.Reset()
	}
	if err := t.html.Execute(b, data); err != nil {
		return err
	}
	// Once executed without error, the template is escaped (under
	// html/template's lock, which this Execute took too) and its tree
	// no longer changes.
	if !t.htmlFastDone.Load() {
		t.htmlFast.Store(compileFast(t.html.Tree))
		t.htmlFastDone.Store(true)
	}
	return nil
}

// Check renders with sample data and composes the result, so a template
// that parses but cannot render (a misspelt variable, a bad .eml header
// block) stops start-up instead of failing a send later.
func (t *Templates) Check(sample any) error {
	m, err := t.Render(sample)
	if err != nil {
		return err
	}
	m.To = "check@example.org"
	_, err = Compose(m, "check@example.org", zeroTime, "<check@example.org>")
	return err
}

var zeroTime = time.Unix(0, 0).UTC()
