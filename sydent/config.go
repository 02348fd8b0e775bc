// Package sydent imports a sydent deployment (the reference Matrix identity
// server, Python) into Herald: its signing key, bindings, pending invites
// with their ephemeral keys, lookup pepper, accounts and accepted terms, from
// its SQLite database and config file, in one bbolt transaction. See
// docs/migrating-from-sydent.md.
package sydent

import (
	"bufio"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Config is what the import needs from sydent's config file (an INI file
// read by Python's ConfigParser).
type Config struct {
	// ServerName is [general] server.name: the name sydent signed as.
	ServerName string
	// ClientHTTPBase is [http] client_http_base: the base of every
	// key_validity_url sydent handed out.
	ClientHTTPBase string
	// KeyID and Key are [crypto] ed25519.signingkey ("ed25519 0 <seed>").
	KeyID string
	Key   ed25519.PrivateKey
	// TemplatesPath and DefaultBrand are [general] templates.path and
	// brand.default.
	TemplatesPath string
	DefaultBrand  string
	// Values holds every "section.key" read, for the settings report.
	Values map[string]string
}

// ReadConfig parses sydent's config file.
func ReadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sydent config: %w", err)
	}
	defer f.Close()
	vals := map[string]string{}
	section, last := "", ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';':
			continue
		case line[0] == ' ' || line[0] == '\t':
			// ConfigParser continuation line.
			if last != "" {
				vals[last] += "\n" + trimmed
			}
			continue
		case trimmed[0] == '[' && strings.HasSuffix(trimmed, "]"):
			section, last = strings.TrimSpace(trimmed[1:len(trimmed)-1]), ""
			continue
		}
		i := strings.IndexAny(trimmed, "=:")
		if i < 0 || section == "" {
			return nil, fmt.Errorf("sydent config %s line %d: not a sydent config file (expected [section] and key = value lines)", path, n)
		}
		last = section + "." + strings.ToLower(strings.TrimSpace(trimmed[:i]))
		vals[last] = strings.TrimSpace(trimmed[i+1:])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("sydent config: %w", err)
	}
	c := &Config{
		ServerName:     vals["general.server.name"],
		ClientHTTPBase: strings.TrimRight(vals["http.client_http_base"], "/"),
		TemplatesPath:  vals["general.templates.path"],
		DefaultBrand:   vals["general.brand.default"],
		Values:         vals,
	}
	if c.ServerName == "" {
		return nil, fmt.Errorf("sydent config %s: [general] server.name is missing", path)
	}
	sk := vals["crypto.ed25519.signingkey"]
	if sk == "" {
		return nil, fmt.Errorf("sydent config %s: [crypto] ed25519.signingkey is missing", path)
	}
	if c.KeyID, c.Key, err = ParseSigningKey(sk); err != nil {
		return nil, fmt.Errorf("sydent config %s: [crypto] ed25519.signingkey: %w", path, err)
	}
	if c.ClientHTTPBase != "" {
		u, err := url.Parse(c.ClientHTTPBase)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("sydent config %s: [http] client_http_base %q is not a URL", path, c.ClientHTTPBase)
		}
	}
	return c, nil
}

// ParseSigningKey reads signedjson's form "ed25519 VERSION SEED" (SEED the
// unpadded standard base64 of the 32-byte seed) into a key id and key.
func ParseSigningKey(s string) (string, ed25519.PrivateKey, error) {
	f := strings.Fields(s)
	if len(f) != 3 || f[0] != "ed25519" {
		return "", nil, fmt.Errorf("want \"ed25519 <version> <seed>\"")
	}
	var seed []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.StdEncoding, base64.RawURLEncoding, base64.URLEncoding} {
		if seed, err = enc.DecodeString(f[2]); err == nil {
			break
		}
	}
	if err != nil || len(seed) != ed25519.SeedSize {
		return "", nil, fmt.Errorf("the seed is not 32 bytes of base64")
	}
	return "ed25519:" + f[1], ed25519.NewKeyFromSeed(seed), nil
}

// ValidityBase is the path prefix of the key_validity_urls sydent handed
// out ("" when client_http_base has no path), and their host.
func (c *Config) ValidityBase() (host, prefix string) {
	if c.ClientHTTPBase == "" {
		return c.ServerName, ""
	}
	u, _ := url.Parse(c.ClientHTTPBase)
	return u.Host, strings.TrimRight(u.Path, "/")
}
