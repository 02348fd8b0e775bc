package spectest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// specFiles are the API description files (relative to the spec folder's
// data/api) whose operations Herald's responses are held to.
var specFiles = []string{
	"identity/v2_associations.yaml",
	"identity/v2_auth.yaml",
	"identity/v2_email_associations.yaml",
	"identity/v2_invitation_signing.yaml",
	"identity/v2_lookup.yaml",
	"identity/v2_phone_associations.yaml",
	"identity/v2_ping.yaml",
	"identity/v2_pubkey.yaml",
	"identity/v2_store_invite.yaml",
	"identity/v2_terms.yaml",
	"identity/versions.yaml",
	"server-server/third_party_invite.yaml",
}

const (
	errorFile       = "client-server/definitions/errors/error.yaml"
	rateLimitedFile = "client-server/definitions/errors/rate_limited.yaml"
)

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options"}

// operation is one documented METHOD + path of the spec.
type operation struct {
	method    string // upper case
	template  string // full path template, e.g. /_matrix/identity/v2/pubkey/{keyId}
	segments  []string
	params    int
	id        string // operationId
	file      string // spec file, relative to data/api
	responses map[string]*response
}

func (op *operation) String() string {
	return fmt.Sprintf("%s %s (%s in %s)", op.method, op.template, op.id, op.file)
}

// response is one documented status (or status range) of an operation.
type response struct {
	key    string             // "200", "4XX", "default"
	schema *jsonschema.Schema // nil if no application/json schema is documented
	loc    string             // schema location, for messages
}

// spec is the loaded, compiled specification.
type spec struct {
	dir         string
	ops         []*operation
	errSchema   *jsonschema.Schema
	rateLimited *jsonschema.Schema
}

var (
	loadOnce   sync.Once
	loadedSpec *spec
	loadErr    error
)

// SpecDirVar names a test variable pointing at the Matrix spec folder (the
// matrix-spec repository's root, holding data/api). It deliberately lacks
// Herald's HERALD_ prefix: tests pass their environment to the built binary,
// which reads HERALD_* as configuration.
const SpecDirVar = "MATRIX_SPEC_DIR"

// errNoSpec means the spec folder is neither named by SpecDirVar nor at
// ../shared/spec. Outside CI that is allowed: responses are then not
// validated against the spec, and one line says so.
var errNoSpec = errors.New("spectest: the Matrix spec was not found")

// load reads and compiles the spec once per process.
func load() (*spec, error) {
	loadOnce.Do(func() {
		dir, err := specDir()
		if err != nil {
			loadErr = err
			return
		}
		loadedSpec, loadErr = compile(dir)
	})
	return loadedSpec, loadErr
}

// required says the spec must be there: CI always has it (CI=true).
func required() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

var (
	noteOnce sync.Once
	noteOut  io.Writer = os.Stderr
)

// unvalidated reports whether err is a missing spec that is allowed (not in
// CI): the caller then lets the response through unchecked. The first time,
// it writes one line saying responses are not validated.
func unvalidated(err error) bool {
	if !errors.Is(err, errNoSpec) || required() {
		return false
	}
	noteOnce.Do(func() {
		fmt.Fprintf(noteOut, "spectest: NOTE: responses were not validated against the Matrix spec "+
			"(not in ../shared/spec and %s is not set; CI=true requires it)\n", SpecDirVar)
	})
	return true
}

// specDir finds the Matrix spec folder: $MATRIX_SPEC_DIR, else ../shared/spec
// relative to the directory holding go.mod. Symbolic links are resolved, so
// the folder (or any parent) may be a link. It returns an error wrapping
// errNoSpec when the variable is unset and ../shared/spec does not exist; a
// variable naming a folder that is not the spec is always an error.
func specDir() (string, error) {
	check := func(dir, how string) (string, error) {
		api := filepath.Join(dir, "data", "api", "identity")
		if fi, err := os.Stat(api); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("spectest: Matrix spec folder not found: %s (%s) has no data/api/identity; "+
				"put the spec files there or set %s", dir, how, SpecDirVar)
		}
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return "", fmt.Errorf("spectest: %s: %w", dir, err)
		}
		return real, nil
	}
	if d := os.Getenv(SpecDirVar); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			return "", fmt.Errorf("spectest: %s=%q: %w", SpecDirVar, d, err)
		}
		return check(abs, "from "+SpecDirVar)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("spectest: %w", err)
	}
	for d := wd; ; {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			shared := filepath.Join(filepath.Dir(d), "shared", "spec")
			if _, err := os.Stat(shared); errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("%w: %s does not exist and %s is not set", errNoSpec, shared, SpecDirVar)
			}
			return check(shared, "../shared/spec from the module root "+d)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("%w: no go.mod above %s to find ../shared/spec from, and %s is not set", errNoSpec, wd, SpecDirVar)
		}
		d = parent
	}
}

// loader reads spec files (YAML or JSON) from the spec folder for the
// schema compiler, converted to JSON values with example keys removed.
type loader struct {
	root string // absolute path of the spec folder
	mu   sync.Mutex
	docs map[string]any
}

func fileURL(path string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(path)}).String()
}

func (l *loader) Load(u string) (any, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return nil, err
	}
	if pu.Scheme != "file" {
		return nil, fmt.Errorf("spectest: refusing to load %s: only spec files are loaded", u)
	}
	return l.file(filepath.FromSlash(pu.Path))
}

func (l *loader) file(path string) (any, error) {
	path = filepath.Clean(path)
	rel, err := filepath.Rel(l.root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, fmt.Errorf("spectest: %s is outside the spec folder %s", path, l.root)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if d, ok := l.docs[path]; ok {
		return d, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("spectest: %w", err)
	}
	var n yaml.Node
	if err := yaml.Unmarshal(raw, &n); err != nil {
		return nil, fmt.Errorf("spectest: parse %s: %w", rel, err)
	}
	doc, err := convert(&n, false)
	if err != nil {
		return nil, fmt.Errorf("spectest: convert %s: %w", rel, err)
	}
	l.docs[path] = doc
	return doc, nil
}

// nameMaps are keys whose values are maps from names (not keywords) to
// schemas: an "example" key inside them is a property name and is kept.
var nameMaps = map[string]bool{
	"properties": true, "patternProperties": true, "$defs": true, "definitions": true,
	"dependentSchemas": true, "paths": true, "responses": true, "content": true, "variables": true,
}

// convert turns a YAML node into a JSON value (map[string]any, []any, string,
// json.Number, bool, nil), dropping the "example" and "examples" keys the spec
// uses for (sometimes non-standard) examples. names says the node is a map
// whose keys are names rather than keywords.
func convert(n *yaml.Node, names bool) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return convert(n.Content[0], false)
	case yaml.AliasNode:
		return convert(n.Alias, names)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: non-scalar map key", k.Line)
			}
			if !names && (k.Value == "example" || k.Value == "examples") {
				continue
			}
			v, err := convert(n.Content[i+1], !names && nameMaps[k.Value])
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := convert(c, false)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return nil, err
			}
			return b, nil
		case "!!int", "!!float":
			if json.Valid([]byte(n.Value)) {
				return json.Number(n.Value), nil
			}
			var f float64
			if err := n.Decode(&f); err != nil {
				return nil, err
			}
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64)), nil
		default: // !!str, !!timestamp, !!binary...: keep the text as written
			return n.Value, nil
		}
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node kind %d", n.Line, n.Kind)
}

// ptr builds a JSON pointer URL fragment from tokens.
func ptr(tokens ...string) string {
	var sb strings.Builder
	for _, t := range tokens {
		t = strings.ReplaceAll(t, "~", "~0")
		t = strings.ReplaceAll(t, "/", "~1")
		sb.WriteByte('/')
		sb.WriteString(url.PathEscape(t))
	}
	return sb.String()
}

func compile(dir string) (*spec, error) {
	api := filepath.Join(dir, "data", "api")
	l := &loader{root: dir, docs: map[string]any{}}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(l)

	s := &spec{dir: dir}
	var errs []error
	var err error
	if s.errSchema, err = c.Compile(fileURL(filepath.Join(api, errorFile))); err != nil {
		errs = append(errs, fmt.Errorf("compile %s: %w", errorFile, err))
	}
	if s.rateLimited, err = c.Compile(fileURL(filepath.Join(api, rateLimitedFile))); err != nil {
		errs = append(errs, fmt.Errorf("compile %s: %w", rateLimitedFile, err))
	}

	for _, rel := range specFiles {
		path := filepath.Join(api, filepath.FromSlash(rel))
		doc, err := l.file(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		root, _ := doc.(map[string]any)
		base := basePath(root)
		paths, _ := root["paths"].(map[string]any)
		if len(paths) == 0 {
			errs = append(errs, fmt.Errorf("%s: no paths", rel))
		}
		for p, item := range paths {
			methods, _ := item.(map[string]any)
			for _, m := range httpMethods {
				o, ok := methods[m].(map[string]any)
				if !ok {
					continue
				}
				op := &operation{
					method:    strings.ToUpper(m),
					template:  base + p,
					file:      rel,
					responses: map[string]*response{},
				}
				op.id, _ = o["operationId"].(string)
				op.segments = strings.Split(strings.Trim(op.template, "/"), "/")
				for _, seg := range op.segments {
					if isParam(seg) {
						op.params++
					}
				}
				resps, _ := o["responses"].(map[string]any)
				for code, r := range resps {
					resp := &response{key: strings.ToUpper(code)}
					op.responses[resp.key] = resp
					rm, _ := r.(map[string]any)
					content, _ := rm["content"].(map[string]any)
					mt, _ := content["application/json"].(map[string]any)
					if _, ok := mt["schema"]; !ok {
						continue
					}
					resp.loc = fileURL(path) + "#" + ptr("paths", p, m, "responses", code, "content", "application/json", "schema")
					sch, err := c.Compile(resp.loc)
					if err != nil {
						errs = append(errs, fmt.Errorf("compile %s response %s: %w", op, code, err))
						continue
					}
					resp.schema = sch
				}
				s.ops = append(s.ops, op)
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("spectest: loading the Matrix spec from %s failed: %w", dir, errors.Join(errs...))
	}
	// Deterministic order; literal segments win over templates (see match).
	sort.Slice(s.ops, func(i, j int) bool {
		if s.ops[i].template != s.ops[j].template {
			return s.ops[i].template < s.ops[j].template
		}
		return s.ops[i].method < s.ops[j].method
	})
	return s, nil
}

func basePath(root map[string]any) string {
	servers, _ := root["servers"].([]any)
	for _, sv := range servers {
		m, _ := sv.(map[string]any)
		vars, _ := m["variables"].(map[string]any)
		bp, _ := vars["basePath"].(map[string]any)
		if d, ok := bp["default"].(string); ok {
			return strings.TrimRight(d, "/")
		}
	}
	return ""
}

func isParam(seg string) bool {
	return len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}'
}
