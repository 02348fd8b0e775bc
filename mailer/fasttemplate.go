package mailer

import (
	"bytes"
	"strings"
	"text/template/parse"
)

// A fastTemplate executes a template of the common shape (text, {{.key}},
// {{if}} on keys, and in an html/template the escapers it inserted) without
// text/template's reflection: a mail's templates were two thirds of the
// CPU its rendering took, most of it html/template's escaper functions
// called through reflect for every {{.key}}. It gives exactly the bytes the
// template gives (FuzzFastTemplateMatchesTemplate) or nothing: anything else
// (another action or function, a data value other than a string or a bool,
// a missing key, data other than map[string]any) makes exec report false and
// the caller executes the template itself, which also gives missingkey=error's
// error.
type fastTemplate struct {
	nodes []fastNode
}

type fastNode struct {
	kind fastKind
	text string   // fastText: the text; fastValue and fastIf: the key
	esc  []escape // fastValue: applied in order (html/template's escapers)
	// fastIf: cond is how the keys are combined; then and els the lists.
	cond      byte // 0: {{if .key}}; 'a': and; 'o': or; 'n': not
	keys      []string
	then, els []fastNode
}

type fastKind uint8

const (
	fastText fastKind = iota
	fastValue
	fastIf
)

// escape is one of html/template's escaper functions, for a plain string
// (not a template.HTML or other typed content, which exec never sees).
type escape func(string) string

// escapers are the html/template escapers a fastTemplate can apply, by the
// names html/template gives them in an escaped tree; they give what
// html/template's give for a plain string.
var escapers = map[string]escape{
	"_html_template_htmlescaper":   htmlEscapeString,
	"_html_template_rcdataescaper": htmlEscapeString,
	"_html_template_attrescaper":   htmlEscapeString,
	"_html_template_urlfilter":     urlFilter,
	"_html_template_urlnormalizer": func(s string) string { return processURL(s, true) },
	"_html_template_urlescaper":    func(s string) string { return processURL(s, false) },
	// An action inside an HTML comment writes nothing.
	"_html_template_commentescaper": func(string) string { return "" },
}

// compileFast returns tree's fastTemplate, or nil when tree holds anything
// it does not handle. For an html/template, tree must be the escaped tree
// (the template's Tree once it has been executed).
func compileFast(tree *parse.Tree) *fastTemplate {
	if tree == nil || tree.Root == nil {
		return nil
	}
	nodes, ok := compileList(tree.Root)
	if !ok {
		return nil
	}
	return &fastTemplate{nodes: nodes}
}

func compileList(l *parse.ListNode) ([]fastNode, bool) {
	if l == nil {
		return nil, true
	}
	var out []fastNode
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			out = append(out, fastNode{kind: fastText, text: string(n.Text)})
		case *parse.ActionNode:
			p := n.Pipe
			if p == nil || len(p.Decl) > 0 || p.IsAssign || len(p.Cmds) == 0 {
				return nil, false
			}
			key, ok := fieldKey(p.Cmds[0])
			if !ok {
				return nil, false
			}
			v := fastNode{kind: fastValue, text: key}
			for _, c := range p.Cmds[1:] {
				if len(c.Args) != 1 {
					return nil, false
				}
				id, ok := c.Args[0].(*parse.IdentifierNode)
				if !ok || escapers[id.Ident] == nil {
					return nil, false
				}
				v.esc = append(v.esc, escapers[id.Ident])
			}
			out = append(out, v)
		case *parse.IfNode:
			p := n.Pipe
			if p == nil || len(p.Decl) > 0 || p.IsAssign || len(p.Cmds) != 1 {
				return nil, false
			}
			f := fastNode{kind: fastIf}
			if key, ok := fieldKey(p.Cmds[0]); ok {
				f.keys = []string{key}
			} else {
				args := p.Cmds[0].Args
				id, ok := args[0].(*parse.IdentifierNode)
				if !ok || len(args) < 2 {
					return nil, false
				}
				switch id.Ident {
				case "and":
					f.cond = 'a'
				case "or":
					f.cond = 'o'
				case "not":
					f.cond = 'n'
					if len(args) != 2 {
						return nil, false
					}
				default:
					return nil, false
				}
				for _, a := range args[1:] {
					fn, ok := a.(*parse.FieldNode)
					if !ok || len(fn.Ident) != 1 {
						return nil, false
					}
					f.keys = append(f.keys, fn.Ident[0])
				}
			}
			var ok bool
			if f.then, ok = compileList(n.List); !ok {
				return nil, false
			}
			if f.els, ok = compileList(n.ElseList); !ok {
				return nil, false
			}
			out = append(out, f)
		default:
			return nil, false
		}
	}
	return out, true
}

// fieldKey is KEY for a command that is {{.KEY}} alone.
func fieldKey(c *parse.CommandNode) (string, bool) {
	if len(c.Args) != 1 {
		return "", false
	}
	f, ok := c.Args[0].(*parse.FieldNode)
	if !ok || len(f.Ident) != 1 {
		return "", false
	}
	return f.Ident[0], true
}

// exec writes the template's output for data to b and reports true, or
// reports false, having written part of it or none, when the template must
// be executed instead.
func (t *fastTemplate) exec(b *bytes.Buffer, data any) bool {
	d, ok := data.(map[string]any)
	if !ok {
		return false
	}
	return execNodes(b, t.nodes, d)
}

func execNodes(b *bytes.Buffer, nodes []fastNode, d map[string]any) bool {
	for i := range nodes {
		n := &nodes[i]
		switch n.kind {
		case fastText:
			b.WriteString(n.text)
		case fastValue:
			s, _, ok := value(d, n.text)
			if !ok {
				return false
			}
			for _, e := range n.esc {
				s = e(s)
			}
			b.WriteString(s)
		case fastIf:
			var truth bool
			switch n.cond {
			case 0, 'n':
				_, t, ok := value(d, n.keys[0])
				if !ok {
					return false
				}
				truth = t == (n.cond == 0)
			case 'a', 'o':
				// and/or stop at the first false/true argument, as
				// text/template's do, so a missing key after it is no
				// error there either.
				truth = n.cond == 'a'
				for _, k := range n.keys {
					_, t, ok := value(d, k)
					if !ok {
						return false
					}
					if t != truth {
						truth = t
						break
					}
				}
			}
			list := n.els
			if truth {
				list = n.then
			}
			if !execNodes(b, list, d) {
				return false
			}
		}
	}
	return true
}

// value is d[key] as text/template prints it and its truth, for a string
// or a bool; ok is false for a missing key or any other type.
func value(d map[string]any, key string) (s string, truth, ok bool) {
	switch v := d[key].(type) {
	case string:
		return v, v != "", true
	case bool:
		if v {
			return "true", true, true
		}
		return "false", false, true
	}
	return "", false, false
}

// htmlEscapeString is html/template's htmlEscaper, rcdataEscaper and
// attrEscaper for a plain string: NUL becomes U+FFFD, and " & ' + < > their
// character references. Every byte it replaces is ASCII, so it works on
// bytes.
func htmlEscapeString(s string) string {
	i := 0
	for i < len(s) && htmlRepl[s[i]] == "" {
		i++
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	written := 0
	for ; i < len(s); i++ {
		if r := htmlRepl[s[i]]; r != "" {
			b.WriteString(s[written:i])
			b.WriteString(r)
			written = i + 1
		}
	}
	b.WriteString(s[written:])
	return b.String()
}

var htmlRepl = [256]string{
	0:    "\uFFFD",
	'"':  "&#34;",
	'&':  "&amp;",
	'\'': "&#39;",
	'+':  "&#43;",
	'<':  "&lt;",
	'>':  "&gt;",
}

// urlFilter is html/template's urlFilter for a plain string: a URL with a
// scheme other than http, https or mailto becomes "#ZgotmplZ".
func urlFilter(s string) string {
	if protocol, _, ok := strings.Cut(s, ":"); ok && !strings.Contains(protocol, "/") {
		if !strings.EqualFold(protocol, "http") && !strings.EqualFold(protocol, "https") && !strings.EqualFold(protocol, "mailto") {
			return "#ZgotmplZ"
		}
	}
	return s
}

// processURL is html/template's urlNormalizer (norm) or urlEscaper for a
// plain string: every byte but RFC 3986's unreserved ones (and, when
// normalizing, its reserved ones and valid %XX escapes) as %xx.
func processURL(s string, norm bool) string {
	var b strings.Builder
	written := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '!', '#', '$', '&', '*', '+', ',', '/', ':', ';', '=', '?', '@', '[', ']':
			if norm {
				continue
			}
		case '-', '.', '_', '~':
			continue
		case '%':
			if norm && i+2 < len(s) && isHexDigit(s[i+1]) && isHexDigit(s[i+2]) {
				continue
			}
		default:
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
				continue
			}
		}
		if written == 0 {
			b.Grow(len(s) + 16)
		}
		b.WriteString(s[written:i])
		b.WriteByte('%')
		b.WriteByte(lowerHex[c>>4])
		b.WriteByte(lowerHex[c&0x0f])
		written = i + 1
	}
	if written == 0 {
		return s
	}
	b.WriteString(s[written:])
	return b.String()
}

const lowerHex = "0123456789abcdef"

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
