package mailer

import (
	htmltemplate "html/template"
	texttemplate "text/template"
	"text/template/parse"
)

// fieldSet is the set of top-level data keys a group of templates reads
// ({{.name}}, {{$.name}}, {{.name.more}}), or nil when they may read any
// key: a template that hands the whole data on ({{index . "x"}},
// {{printf "%v" .}}, {{template "x" .}}) or refers to a variable this walk
// does not follow. Callers that build costly data (invites' templateData)
// fill only these keys; since every template runs with missingkey=error, a
// key left out by mistake fails the render rather than printing nothing.
type fieldSet map[string]bool

// Uses reports whether the key may be read by any of t's templates.
func (t *Templates) Uses(key string) bool { return t.uses == nil || t.uses[key] }

// SubjectUses reports whether the key may be read by t's subject template
// (RenderSubject); with a .eml template, as Uses.
func (t *Templates) SubjectUses(key string) bool {
	if t.raw != nil {
		return t.Uses(key)
	}
	return t.subjectUses == nil || t.subjectUses[key]
}

// collectFields returns the keys read by the trees, or nil for "any".
func collectFields(trees []*parse.Tree) fieldSet {
	set := fieldSet{}
	for _, tr := range trees {
		if tr == nil || tr.Root == nil {
			continue
		}
		if !walkFields(tr.Root, set) {
			return nil
		}
	}
	return set
}

func textTrees(ts ...*texttemplate.Template) []*parse.Tree {
	var out []*parse.Tree
	for _, t := range ts {
		if t == nil {
			continue
		}
		for _, a := range t.Templates() {
			out = append(out, a.Tree)
		}
	}
	return out
}

func htmlTrees(t *htmltemplate.Template) []*parse.Tree {
	if t == nil {
		return nil
	}
	var out []*parse.Tree
	for _, a := range t.Templates() {
		out = append(out, a.Tree)
	}
	return out
}

// walkFields adds the keys n reads to set; false means n may read any key.
func walkFields(n parse.Node, set fieldSet) bool {
	switch n := n.(type) {
	case nil:
		return true
	case *parse.ListNode:
		if n == nil {
			return true
		}
		for _, c := range n.Nodes {
			if !walkFields(c, set) {
				return false
			}
		}
		return true
	case *parse.ActionNode:
		return walkFields(n.Pipe, set)
	case *parse.IfNode:
		return walkBranch(&n.BranchNode, set)
	case *parse.RangeNode:
		return walkBranch(&n.BranchNode, set)
	case *parse.WithNode:
		return walkBranch(&n.BranchNode, set)
	case *parse.TemplateNode:
		// The called template is walked on its own (every template of
		// the set is); what it receives must not be the whole data.
		if n.Pipe == nil {
			return true
		}
		return walkFields(n.Pipe, set)
	case *parse.PipeNode:
		if n == nil {
			return true
		}
		for _, c := range n.Cmds {
			if !walkFields(c, set) {
				return false
			}
		}
		return true
	case *parse.CommandNode:
		for _, a := range n.Args {
			if !walkFields(a, set) {
				return false
			}
		}
		return true
	case *parse.FieldNode:
		// Inside {{with}} or {{range}} the dot is something else and this
		// adds a key that is not the data's: harmless, one key too many.
		set[n.Ident[0]] = true
		return true
	case *parse.VariableNode:
		if n.Ident[0] != "$" {
			return true // a variable set in the template: its pipeline is walked where it is declared
		}
		if len(n.Ident) < 2 {
			return false // $ alone is the whole data
		}
		set[n.Ident[1]] = true
		return true
	case *parse.ChainNode:
		return walkFields(n.Node, set)
	case *parse.DotNode:
		return false
	case *parse.BreakNode, *parse.ContinueNode, *parse.TextNode, *parse.CommentNode,
		*parse.IdentifierNode, *parse.StringNode, *parse.NumberNode, *parse.BoolNode, *parse.NilNode:
		return true
	default:
		return false // a node this walk does not know: assume anything
	}
}

func walkBranch(b *parse.BranchNode, set fieldSet) bool {
	return walkFields(b.Pipe, set) && walkFields(b.List, set) && walkFields(b.ElseList, set)
}
