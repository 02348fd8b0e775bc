package config

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load builds the configuration: defaults, then the YAML file at path (if
// path is not empty), then HERALD_* variables from environ, then Validate.
func Load(path string, environ []string) (*Config, error) {
	c := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: cannot read %s: %v", path, unwrapPathErr(err))
		}
		if err := decodeYAML(raw, &c); err != nil {
			return nil, err
		}
	}
	unknown, err := applyEnv(&c, environ)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	for _, name := range unknown {
		c.Warnings = append(c.Warnings, fmt.Sprintf("config: %s: unknown variable (no such key), ignored", name))
	}
	c.Warnings = append(c.Warnings, c.warnings()...)
	return &c, nil
}

// decodeYAML decodes raw into c key by key, so that an unknown key or a value
// of the wrong type is reported with its full path.
func decodeYAML(raw []byte, c *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("config: not valid YAML: %v", err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	return decodeNode(doc.Content[0], reflect.ValueOf(c).Elem(), "")
}

func decodeNode(n *yaml.Node, v reflect.Value, path string) error {
	if v.Kind() == reflect.Struct && v.Type() != reflect.TypeOf(Duration(0)) {
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return keyErr(orRoot(path), fmt.Sprintf("must be a mapping (line %d)", n.Line))
		}
		fields, inline := structFields(v)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if f, ok := fields[k.Value]; ok {
				if err := decodeNode(val, f, key); err != nil {
					return err
				}
				continue
			}
			if inline.IsValid() {
				if inline.IsNil() {
					inline.Set(reflect.MakeMap(inline.Type()))
				}
				elem := reflect.New(inline.Type().Elem()).Elem()
				if err := decodeNode(val, elem, key); err != nil {
					return err
				}
				inline.SetMapIndex(reflect.ValueOf(k.Value), elem)
				continue
			}
			return keyErr(key, fmt.Sprintf("unknown key (line %d)", k.Line))
		}
		return nil
	}
	if v.Kind() == reflect.Map && v.Type().Key().Kind() == reflect.String {
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return keyErr(path, fmt.Sprintf("must be a mapping (line %d)", n.Line))
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := decodeNode(val, elem, join(path, k.Value)); err != nil {
				return err
			}
			v.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		return nil
	}
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct {
		if n.Kind != yaml.SequenceNode {
			return keyErr(path, fmt.Sprintf("must be a list (line %d)", n.Line))
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if err := decodeNode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		return keyErr(path, fmt.Sprintf("wrong type: want %s (line %d)", typeName(v.Type()), n.Line))
	}
	return nil
}

// structFields maps yaml key names to settable fields; inline is the ",inline" map, if any.
func structFields(v reflect.Value) (map[string]reflect.Value, reflect.Value) {
	fields := map[string]reflect.Value{}
	var inline reflect.Value
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "inline" {
			inline = v.Field(i)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		fields[name] = v.Field(i)
	}
	return fields, inline
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(Duration(0)):
		return "a duration such as 30s, 12h, 7d or 0"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Int, t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Slice:
		return "a list of " + typeName(t.Elem()) + "s"
	}
	return t.String()
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(p string) string {
	if p == "" {
		return "(top level)"
	}
	return p
}

// applyEnv overrides keys from HERALD_<PATH> variables: the key path upper-cased
// with "." replaced by "_" (HERALD_SMTP_HOST). Values are parsed as YAML, so
// lists and maps can be given as [a, b] and {k: v}; strings are taken verbatim.
// A HERALD_ variable naming no key is returned in unknown, not refused:
// Kubernetes injects HERALD_SERVICE_HOST, HERALD_PORT... into every pod
// beside a Service named herald, and refusing them would crash-loop the pod.
func applyEnv(c *Config, environ []string) (unknown []string, err error) {
	leaves := map[string]leaf{}
	collectLeaves(reflect.ValueOf(c).Elem(), "", leaves)
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "HERALD_") || name == "HERALD_CONFIG" {
			continue
		}
		l, ok := leaves[strings.TrimPrefix(name, "HERALD_")]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if l.v.Kind() == reflect.String {
			l.v.SetString(val)
			continue
		}
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(val), &n); err != nil || len(n.Content) == 0 {
			return nil, keyErr(l.key, fmt.Sprintf("from %s: not a valid value", name))
		}
		// Decode into a fresh value so a map or list replaces the file's one.
		fresh := reflect.New(l.v.Type()).Elem()
		if err := decodeNode(n.Content[0], fresh, l.key); err != nil {
			return nil, fmt.Errorf("%v (from %s)", err, name)
		}
		l.v.Set(fresh)
	}
	sort.Strings(unknown)
	return unknown, nil
}

type leaf struct {
	key string
	v   reflect.Value
}

func collectLeaves(v reflect.Value, path string, out map[string]leaf) {
	if v.Kind() == reflect.Struct && v.Type() != reflect.TypeOf(Duration(0)) {
		fields, _ := structFields(v)
		for name, f := range fields {
			collectLeaves(f, join(path, name), out)
		}
		return
	}
	out[strings.ToUpper(strings.ReplaceAll(path, ".", "_"))] = leaf{key: path, v: v}
}

// Duration is a time.Duration that also accepts days ("7d") and 0 or "never".
type Duration time.Duration

func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string {
	if d == 0 {
		return "0"
	}
	if d%Duration(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(time.Duration(d)/(24*time.Hour)), 10) + "d"
	}
	return time.Duration(d).String()
}

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	p, err := ParseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = p
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ParseDuration parses Go durations plus a "d" (day) suffix; "0" and "never" are 0.
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" || s == "never" || s == "" {
		return 0, nil
	}
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseFloat(strings.TrimSuffix(s, "d"), 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		return Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return Duration(d), nil
}
