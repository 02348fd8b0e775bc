package sydent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// sydent's template files and the Herald kind each becomes: sydent prefers
// the Jinja2 .eml.j2 file when both exist.
var templateKinds = []struct{ sydent, kind string }{
	{"invite_template", "invite"},
	{"verification_template", "validation"},
}

// heraldVars are the string values Herald's templates get under sydent's
// names, each with _forhtml and _forurl variants (invites/email.go,
// identity/validate.go's validationData has no variants: see exprFor).
var heraldVars = map[string]map[string]bool{
	"invite": set("medium", "address", "to", "room_id", "sender", "token", "room_alias", "room_avatar_url",
		"room_join_rules", "room_name", "room_type", "sender_display_name", "sender_avatar_url",
		"ephemeral_private_key", "web_client_location", "signurl"),
	"validation": set("to", "token", "link", "sid"),
}

func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// ConvertedFile is one template written.
type ConvertedFile struct {
	Brand, From, To string
	Changed         bool // written now (false: already there, identical)
}

// Conversion reports a template conversion.
type Conversion struct {
	Files []ConvertedFile
	// Notes say where Herald's output differs from sydent's on purpose.
	Notes []string
	// Problems name each construct that could not be converted (file, line,
	// construct); the construct is left as it was, so Herald refuses to
	// start with that template until it is fixed by hand.
	Problems []string
}

func (c *Conversion) String() string {
	var b strings.Builder
	for _, f := range c.Files {
		state := "unchanged"
		if f.Changed {
			state = "written"
		}
		fmt.Fprintf(&b, "template %s -> %s (%s)\n", f.From, f.To, state)
	}
	for _, n := range c.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	for _, p := range c.Problems {
		fmt.Fprintf(&b, "  NOT CONVERTED: %s\n", p)
	}
	return b.String()
}

// ErrUnconverted means some template constructs could not be converted.
var ErrUnconverted = errors.New("some sydent template constructs could not be converted (listed above); edit those templates before starting Herald")

// ConvertTemplates converts sydent's templates under src (templates.path:
// one directory per brand, or the template files themselves) into Herald
// templates under dst: dst/BRAND/invite.eml and dst/BRAND/validation.eml,
// and the default brand's (brand.default in sydent's config) also as
// dst/invite.eml and dst/validation.eml, which Herald uses. A file already
// in dst with other content is an error; identical, it is left alone.
func ConvertTemplates(src, dst string, cfg *Config) (*Conversion, error) {
	brands, err := findBrands(src)
	if err != nil {
		return nil, err
	}
	if len(brands) == 0 {
		return nil, fmt.Errorf("sydent templates %s: no invite_template.eml(.j2) or verification_template.eml(.j2), in it or in a brand directory under it", src)
	}
	def := cfg.DefaultBrand
	if _, ok := brands[def]; !ok {
		if _, top := brands[""]; top {
			def = ""
		} else {
			names := make([]string, 0, len(brands))
			for b := range brands {
				names = append(names, b)
			}
			sort.Strings(names)
			def = names[0]
		}
	}
	conv := &Conversion{}
	names := make([]string, 0, len(brands))
	for b := range brands {
		names = append(names, b)
	}
	sort.Strings(names)
	for _, brand := range names {
		dir := brands[brand]
		for _, k := range templateKinds {
			from := filepath.Join(dir, k.sydent+".eml.j2")
			jinja := true
			if _, err := os.Stat(from); err != nil {
				from, jinja = filepath.Join(dir, k.sydent+".eml"), false
				if _, err := os.Stat(from); err != nil {
					continue
				}
			}
			raw, err := os.ReadFile(from)
			if err != nil {
				return nil, fmt.Errorf("sydent template: %w", err)
			}
			c := &converter{kind: k.kind, file: from, cfg: cfg, conv: conv, boundary: boundaryFor(raw)}
			var out string
			if jinja {
				out = c.jinja(dropHeaders(string(raw), "{{"))
			} else {
				out = c.legacy(dropHeaders(string(raw), "%("))
			}
			targets := []string{filepath.Join(dst, brand, k.kind+".eml")}
			if brand == def && brand != "" {
				targets = append(targets, filepath.Join(dst, k.kind+".eml"))
			}
			for _, to := range targets {
				changed, err := writeIfNew(to, []byte(out))
				if err != nil {
					return nil, err
				}
				conv.Files = append(conv.Files, ConvertedFile{Brand: brand, From: from, To: to, Changed: changed})
			}
		}
	}
	conv.Notes = append(conv.Notes,
		"Date, Message-ID and From headers are written by Herald (From is smtp.from, was email.from)",
		"web_client_location is email.web_client_url (was email.default_web_client_location)")
	if len(conv.Problems) > 0 {
		return conv, ErrUnconverted
	}
	return conv, nil
}

// findBrands maps brand name -> directory: src's subdirectories holding
// templates, and src itself ("") if it holds any.
func findBrands(src string) (map[string]string, error) {
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, fmt.Errorf("sydent templates: %w", err)
	}
	has := func(dir string) bool {
		for _, k := range templateKinds {
			for _, ext := range []string{".eml", ".eml.j2"} {
				if _, err := os.Stat(filepath.Join(dir, k.sydent+ext)); err == nil {
					return true
				}
			}
		}
		return false
	}
	out := map[string]string{}
	if has(src) {
		out[""] = src
	}
	for _, e := range entries {
		if e.IsDir() && has(filepath.Join(src, e.Name())) {
			out[e.Name()] = filepath.Join(src, e.Name())
		}
	}
	return out, nil
}

func writeIfNew(path string, data []byte) (bool, error) {
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, data):
		return false, nil
	case err == nil:
		return false, fmt.Errorf("%s already exists with other content; move it away to convert sydent's template there", path)
	case !errors.Is(err, fs.ErrNotExist):
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	return true, os.WriteFile(path, data, 0o644)
}

// boundaryFor is the MIME boundary of a converted template: sydent drew a
// random one per mail; a fixed one derived from the template keeps a
// repeated conversion identical (user input cannot contain it: it is 32
// hex digits nobody chose).
func boundaryFor(src []byte) string {
	h := sha256.Sum256(src)
	return "herald-" + hex.EncodeToString(h[:12])
}

type converter struct {
	kind, file string
	cfg        *Config
	conv       *Conversion
	boundary   string
}

func (c *converter) problem(line int, construct, why string) {
	c.conv.Problems = append(c.conv.Problems, fmt.Sprintf("%s line %d: %s: %s", c.file, line, construct, why))
}

// exprFor is a Go template pipeline giving sydent's value of name (without
// _forhtml/_forurl), or ok false if Herald has nothing for it.
func (c *converter) exprFor(name string) (expr string, ok bool) {
	switch name {
	case "bracketed_room_name":
		if c.kind == "invite" {
			return `or (and .room_name (print "(" .room_name ") ")) ""`, true
		}
	case "bracketed_verified_sender":
		if c.kind == "invite" {
			return `print "(" .sender ") "`, true
		}
	case "multipart_boundary":
		return strconv.Quote(c.boundary), true
	case "subject_header_value":
		return c.subjectExpr(), true
	}
	if heraldVars[c.kind][name] {
		return "." + name, true
	}
	if c.kind == "invite" {
		// Any other store-invite field: sydent rendered what the homeserver
		// sent and "" otherwise; Herald keeps the extra fields under the
		// same names.
		return `or (index . "` + name + `") ""`, true
	}
	return "", false
}

// subjectExpr renders sydent's configured subject (email.invite.subject,
// email.invite.subject_space for spaces, email.subject for validation),
// RFC 2047-encoded as sydent's Header() did.
func (c *converter) subjectExpr() string {
	conv := func(key, def string) string {
		s, ok := c.cfg.Values["email."+key]
		if !ok {
			s = def
		}
		parts := []string{}
		last := 0
		for _, m := range legacyVar.FindAllStringSubmatchIndex(s, -1) {
			parts = append(parts, strconv.Quote(strings.ReplaceAll(s[last:m[0]], "%%", "%")))
			if m[2] >= 0 {
				name := s[m[2]:m[3]]
				e, ok := c.exprFor(name)
				if !ok || name == "subject_header_value" {
					c.problem(0, "%("+name+")s in "+key, "no Herald value")
					e = `""`
				}
				parts = append(parts, "("+e+")")
			} else {
				parts = append(parts, `"%"`)
			}
			last = m[1]
		}
		parts = append(parts, strconv.Quote(strings.ReplaceAll(s[last:], "%%", "%")))
		return "encodeHeader (print " + strings.Join(parts, " ") + ")"
	}
	if c.kind == "validation" {
		return conv("email.subject", "Your Validation Token")
	}
	room := conv("email.invite.subject", "%(sender_display_name)s has invited you to chat")
	space := conv("email.invite.subject_space", "%(sender_display_name)s has invited you to a space")
	return `or (and (eq .room_type "m.space") (` + space + `)) (` + room + `)`
}

// render is the action printing name (with its _forhtml/_forurl suffix) as
// sydent did; escape adds Jinja's autoescaping.
func (c *converter) render(full string, line int, escape bool) (string, bool) {
	name, enc := full, ""
	for _, suf := range []string{"_forhtml", "_forurl"} {
		if strings.HasSuffix(full, suf) {
			name, enc = strings.TrimSuffix(full, suf), suf
		}
	}
	e, ok := c.exprFor(name)
	if !ok {
		c.problem(line, full, "Herald has no such value for "+c.kind+" mail")
		return "", false
	}
	if name == "subject_header_value" || name == "multipart_boundary" {
		return "{{" + e + "}}", true
	}
	if name == "to" && enc == "" {
		e = "header .to" // also used in the To: header: no line breaks
	}
	switch enc {
	case "_forhtml":
		e = "pyescape (" + e + ")"
	case "_forurl":
		e = "pyquote (" + e + ")"
	}
	if escape {
		e = "html (" + e + ")"
	}
	return "{{" + e + "}}", true
}

var legacyVar = regexp.MustCompile(`%\(([A-Za-z_][A-Za-z0-9_]*)\)s|%%`)

// dropHeader reports whether a header line is one Herald writes itself.
func dropHeader(line string) bool {
	l := strings.ToLower(line)
	for _, h := range []string{"date:", "message-id:", "from:"} {
		if strings.HasPrefix(l, h) {
			return true
		}
	}
	return false
}

// goText escapes literal text for a Go template: "{{" starts an action,
// and "{%", "{#" and "%(" would look like sydent syntax, which Herald
// refuses at start-up; each is written as a Go string constant instead.
// A trailing "{" is escaped too: an action may follow it.
func goText(s string) string {
	s = goTextEscaper.Replace(s)
	if strings.HasSuffix(s, "{") {
		s = s[:len(s)-1] + `{{"{"}}`
	}
	return s
}

var goTextEscaper = strings.NewReplacer("{{", `{{"{{"}}`, "{%", `{{"{%"}}`, "{#", `{{"{#"}}`, "%(", `{{"%("}}`)

// legacy converts a Python %-format template: %(name)s, its _forhtml and
// _forurl variants, and %%.
func (c *converter) legacy(src string) string {
	var out strings.Builder
	for i, line := range strings.SplitAfter(src, "\n") {
		n := i + 1
		last := 0
		var lit strings.Builder // literal text, escaped as a whole when an action follows
		text := func(t string) {
			if j := strings.IndexByte(t, '%'); j >= 0 {
				c.problem(n, strings.TrimSpace(t[j:min(len(t), j+12)]), "a Python format sequence other than %(name)s and %%")
			}
			lit.WriteString(t)
		}
		flush := func() {
			out.WriteString(goText(lit.String()))
			lit.Reset()
		}
		for _, m := range legacyVar.FindAllStringSubmatchIndex(line, -1) {
			text(line[last:m[0]])
			last = m[1]
			if m[2] < 0 {
				lit.WriteString("%")
				continue
			}
			flush()
			name := line[m[2]:m[3]]
			if r, ok := c.render(name, n, false); ok {
				out.WriteString(r)
			} else {
				out.WriteString(line[m[0]:m[1]])
			}
		}
		text(line[last:])
		flush()
	}
	return out.String()
}

// dropHeaders removes the Date, Message-ID and From lines of the header
// block that hold a substitution (marker): Herald writes those headers.
func dropHeaders(src, marker string) string {
	head, body, ok := strings.Cut(src, "\n\n")
	if !ok {
		return src
	}
	var keep []string
	for _, line := range strings.Split(head, "\n") {
		if dropHeader(line) && strings.Contains(line, marker) {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n") + "\n\n" + body
}

var jinjaTag = regexp.MustCompile(`(?s)\{\{(-?)(.*?)(-?)\}\}|\{%(-?)(.*?)(-?)%\}|\{#.*?#\}`)

var (
	jinjaVar = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*((?:\|\s*[a-z]+\s*)*)$`)
	jinjaIf  = regexp.MustCompile(`^(if|elif)\s+(not\s+)?([A-Za-z_][A-Za-z0-9_]*)(?:\s*(==|!=)\s*("[^"]*"|'[^']*'))?$`)
)

// jinja converts a Jinja2 template as sydent rendered it (autoescaping on):
// {{ name }} with the filters safe, e/escape, urlencode; {% if %} / elif /
// else / endif on a name, its negation or a comparison with a string;
// comments. Anything else is reported and left as it was.
func (c *converter) jinja(src string) string {
	var out strings.Builder
	last := 0
	lineAt := func(off int) int { return strings.Count(src[:off], "\n") + 1 }
	depth := 0 // {% if %} blocks open
	for _, m := range jinjaTag.FindAllStringSubmatchIndex(src, -1) {
		text := src[last:m[0]]
		last = m[1]
		tag := src[m[0]:m[1]]
		n := lineAt(m[0])
		out.WriteString(goText(text))
		switch {
		case strings.HasPrefix(tag, "{#"):
			continue
		case strings.HasPrefix(tag, "{{"):
			lt, body, rt := src[m[2]:m[3]], strings.TrimSpace(src[m[4]:m[5]]), src[m[6]:m[7]]
			v := jinjaVar.FindStringSubmatch(body)
			if v == nil {
				c.problem(n, tag, "only {{ name }} with the filters safe, e and urlencode is converted")
				out.WriteString(tag)
				continue
			}
			escape, urlenc, ok := true, false, true
			for _, f := range strings.Split(v[2], "|") {
				switch strings.TrimSpace(f) {
				case "":
				case "safe":
					escape = false
				case "e", "escape":
					escape = true
				case "urlencode":
					urlenc = true
				default:
					ok = false
				}
			}
			if !ok {
				c.problem(n, tag, "filter not converted")
				out.WriteString(tag)
				continue
			}
			name := v[1]
			if urlenc {
				name += "_forurl"
			}
			r, ok := c.render(name, n, escape && !strings.HasSuffix(name, "_forurl"))
			if !ok {
				out.WriteString(tag)
				continue
			}
			out.WriteString(trimMarks(r, lt, rt))
		default:
			lt, body, rt := src[m[8]:m[9]], strings.TrimSpace(src[m[10]:m[11]]), src[m[12]:m[13]]
			var act string
			switch {
			case (body == "else" || body == "endif" || strings.HasPrefix(body, "elif ")) && depth == 0:
				c.problem(n, tag, "no {% if %} is open here")
				out.WriteString(tag)
				continue
			case body == "else":
				act = "{{else}}"
			case body == "endif":
				act = "{{end}}"
				depth--
			default:
				f := jinjaIf.FindStringSubmatch(body)
				if f == nil {
					c.problem(n, tag, "only if/elif/else/endif on a name are converted")
					out.WriteString(tag)
					continue
				}
				e, ok := c.exprFor(f[3])
				if !ok {
					c.problem(n, tag, "Herald has no such value for "+c.kind+" mail")
					out.WriteString(tag)
					continue
				}
				cond := "(" + e + ")"
				if f[4] != "" {
					lit := f[5][1 : len(f[5])-1]
					op := "eq"
					if f[4] == "!=" {
						op = "ne"
					}
					cond = "(" + op + " (" + e + ") " + strconv.Quote(lit) + ")"
				}
				if f[2] != "" {
					cond = "(not " + cond + ")"
				}
				word := "if"
				if f[1] == "elif" {
					word = "else if"
				} else {
					depth++
				}
				act = "{{" + word + " " + cond + "}}"
			}
			out.WriteString(trimMarks(act, lt, rt))
		}
	}
	if last < len(src) {
		out.WriteString(goText(src[last:]))
	}
	if depth > 0 {
		c.problem(lineAt(len(src)), "{% if %}", fmt.Sprintf("%d not closed by {%% endif %%} at the end", depth))
	}
	return out.String()
}

// trimMarks carries Jinja's whitespace control ({{- -}}) over to Go's.
func trimMarks(action, left, right string) string {
	if left == "-" {
		action = "{{- " + strings.TrimPrefix(action, "{{")
	}
	if right == "-" {
		action = strings.TrimSuffix(action, "}}") + " -}}"
	}
	return action
}
