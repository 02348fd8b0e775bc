package config

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// herald.example.yaml documents every key with its default value, and
// docs/configuration.md documents every key.
func TestExampleDocumentsEveryKey(t *testing.T) {
	path := filepath.Join("..", "herald.example.yaml")
	c, err := Load(path, nil)
	if err != nil {
		t.Fatalf("herald.example.yaml does not load: %v", err)
	}
	def := Default()
	if !reflect.DeepEqual(normalize(*c), normalize(def)) {
		t.Errorf("herald.example.yaml values differ from Default():\n%+v\n%+v", *c, def)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	inExample := map[string]bool{}
	walkKeys(doc.Content[0], "", inExample)
	docs, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	leaves := map[string]leaf{}
	collectLeaves(reflect.ValueOf(&def).Elem(), "", leaves)
	var keys []string
	for _, l := range leaves {
		keys = append(keys, l.key)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !inExample[k] {
			t.Errorf("herald.example.yaml lacks %s", k)
		}
		if !strings.Contains(string(docs), "`"+k+"`") {
			t.Errorf("docs/configuration.md lacks `%s`", k)
		}
	}
}

// The docker-compose example's configuration is valid.
func TestDeployConfigLoads(t *testing.T) {
	c, err := Load(filepath.Join("..", "deploy", "herald", "herald.yaml"), nil)
	if err != nil {
		t.Fatalf("deploy/herald/herald.yaml: %v", err)
	}
	if !c.TLS.SelfSigned || c.Federation.Servers["synapse.localhost"] == "" {
		t.Errorf("deploy config: %+v", c)
	}
}

func walkKeys(n *yaml.Node, path string, out map[string]bool) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := join(path, n.Content[i].Value)
		out[k] = true
		walkKeys(n.Content[i+1], k, out)
	}
}

// normalize makes empty and nil maps and slices compare equal.
func normalize(c Config) Config {
	if len(c.Federation.Servers) == 0 {
		c.Federation.Servers = nil
	}
	if len(c.Terms.Policies) == 0 {
		c.Terms.Policies = nil
	}
	v := reflect.ValueOf(&c).Elem()
	var walk func(reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				walk(v.Field(i))
			}
		case reflect.Slice, reflect.Map:
			if v.Len() == 0 && v.CanSet() {
				v.Set(reflect.Zero(v.Type()))
			}
		}
	}
	walk(v)
	return c
}
