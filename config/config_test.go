package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestDefaultsAreValid(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:8090" || c.DataDir != "herald-data" || c.ServerName != "localhost:8090" {
		t.Errorf("defaults: %+v", c)
	}
	if c.BaseURL() != "http://127.0.0.1:8090" || c.Federation.AllowPrivateAddresses || c.Federation.InsecureSkipVerify || c.Compat.V1 {
		t.Errorf("defaults: base %s", c.BaseURL())
	}
}

func TestFileThenEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "herald.yaml")
	yml := `
server_name: id.example.org
public_base_url: https://id.example.org/
smtp:
  host: mail.example.org
  username: herald
  password: hunter2
  security: tls
federation:
  servers:
    hs.example.org: https://10.0.0.5:8448
  timeout: 3s
terms:
  policies:
    privacy_policy:
      version: "1.2"
      en: {name: Privacy Policy, url: "https://id.example.org/privacy-en.html"}
      fr: {name: Politique, url: "https://id.example.org/privacy-fr.html"}
invites:
  expiry: 14d
`
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, []string{
		"HERALD_SMTP_HOST=smtp.example.net",
		"HERALD_SMTP_PORT=2525",
		"HERALD_COMPAT_V1=true",
		"HERALD_FEDERATION_SERVERS={other.test: 'http://127.0.0.1:1'}",
		"HERALD_EMAIL_WEB_CLIENT_ALLOWLIST=[https://chat.example.org]",
		"PATH=/usr/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerName != "id.example.org" || c.BaseURL() != "https://id.example.org" {
		t.Errorf("server_name/base: %s %s", c.ServerName, c.BaseURL())
	}
	if c.SMTP.Host != "smtp.example.net" || c.SMTP.Port != 2525 || c.SMTPPort() != 2525 || c.SMTP.Password != "hunter2" || !c.Compat.V1 {
		t.Errorf("smtp/compat: %+v %v", c.SMTP, c.Compat)
	}
	if len(c.Federation.Servers) != 1 || c.Federation.Servers["other.test"] != "http://127.0.0.1:1" {
		t.Errorf("env map should replace the file's: %v", c.Federation.Servers)
	}
	if c.Federation.Timeout.D() != 3*time.Second || c.Invites.Expiry.D() != 14*24*time.Hour {
		t.Errorf("durations: %v %v", c.Federation.Timeout, c.Invites.Expiry)
	}
	p := c.Terms.Policies["privacy_policy"]
	if p.Version != "1.2" || len(p.Languages) != 2 || p.Languages["fr"].URL != "https://id.example.org/privacy-fr.html" {
		t.Errorf("terms: %+v", p)
	}
	if len(c.Email.WebClientAllowlist) != 1 {
		t.Errorf("allowlist: %v", c.Email.WebClientAllowlist)
	}
}

func TestKeyErrors(t *testing.T) {
	for yml, key := range map[string]string{
		"smtp: {hots: x}":    "smtp.hots",
		"smtp: 5":            "smtp",
		"log: {level: loud}": "log.level",
		"tls: {self_signed: true, cert_file: /etc/hostname, key_file: /etc/hostname}": "tls.self_signed",
		"admin: {users: [{username: a}]}":                                             "admin.users[0].password_hash",
		"email: {web_client_url: 'element'}":                                          "email.web_client_url",
		"smtp: {from: 'not an address'}":                                              "smtp.from",
		"smtp: {username: u}":                                                         "smtp.password",
		"smtp: {port: 70000}":                                                         "smtp.port",
		"metrics: {listen: '9090'}":                                                   "metrics.listen",
		"metrics: {listen: '127.0.0.1:8090'}":                                         "metrics.listen",
		"trusted_proxies: [10.0.0.0/33]":                                              "trusted_proxies[0]",
		"trusted_proxies: [127.0.0.1, proxy.example.org]":                             "trusted_proxies[1]",
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		os.WriteFile(path, []byte(yml), 0o600)
		_, err := Load(path, nil)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v, want an error naming %s", yml, err, key)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: multi-line error %q", yml, err)
		} else if !strings.HasPrefix(err.Error(), "config: ") {
			t.Errorf("%s: %q", yml, err)
		}
	}
}

func TestSecretNeverPrints(t *testing.T) {
	c := Default()
	c.SMTP.Password = "hunter2"
	c.Admin.APITokens = []Secret{"tok-sekrit"}
	var out []string
	out = append(out, fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c.SMTP, c.SMTP, c.SMTP, c.SMTP.Password))
	j, _ := json.Marshal(c)
	out = append(out, string(j))
	y, _ := yaml.Marshal(c)
	out = append(out, string(y))
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var b bytes.Buffer
		slog.New(h(&b)).Info("config", "password", c.SMTP.Password, "smtp", c.SMTP, "tokens", c.Admin.APITokens)
		out = append(out, b.String())
	}
	for _, s := range out {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "tok-sekrit") {
			t.Errorf("secret printed: %s", s)
		}
	}
	if string(c.SMTP.Password) != "hunter2" {
		t.Error("the value itself must stay usable")
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"0": 0, "never": 0, "90s": 90 * time.Second, "7d": 7 * 24 * time.Hour, "1.5d": 36 * time.Hour, "2h30m": 150 * time.Minute} {
		d, err := ParseDuration(in)
		if err != nil || d.D() != want {
			t.Errorf("ParseDuration(%q) = %v, %v", in, d, err)
		}
	}
	for _, in := range []string{"soon", "-1h", "-2d", "5"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
	if s := Duration(7 * 24 * time.Hour).String(); s != "7d" {
		t.Errorf("String = %s", s)
	}
}

// A HERALD_ variable naming no key (Kubernetes injects HERALD_SERVICE_HOST,
// HERALD_PORT... for a Service named herald) is a warning naming it, not an
// error; one naming a key with a bad value still stops start-up.
func TestUnknownEnvWarns(t *testing.T) {
	env := []string{"HERALD_SERVICE_HOST=10.0.0.7", "HERALD_PORT=tcp://10.0.0.7:8090", "HERALD_SMTP_HOST=mail.test", "OTHER=1"}
	c, err := Load("", env)
	if err != nil {
		t.Fatalf("unknown HERALD_ variables refused: %v", err)
	}
	if c.SMTP.Host != "mail.test" {
		t.Errorf("known variable not applied: %q", c.SMTP.Host)
	}
	want := []string{
		"config: HERALD_PORT: unknown variable (no such key), ignored",
		"config: HERALD_SERVICE_HOST: unknown variable (no such key), ignored",
	}
	if strings.Join(c.Warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings %q, want %q", c.Warnings, want)
	}
	for _, w := range c.Warnings {
		if strings.Contains(w, "10.0.0.7") {
			t.Errorf("warning shows the value: %q", w)
		}
	}
	if _, err := Load("", []string{"HERALD_SERVICE_HOST=x", "HERALD_SMTP_PORT=abc"}); err == nil || !strings.Contains(err.Error(), "smtp.port") {
		t.Errorf("bad value of a known variable: %v", err)
	}
	// Unknown keys in the file stay fatal.
	path := filepath.Join(t.TempDir(), "herald.yaml")
	os.WriteFile(path, []byte("service_host: x\n"), 0o600)
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "service_host: unknown key") {
		t.Errorf("unknown file key: %v", err)
	}
}

// A public_base_url derived from a wildcard listen address would put
// http://0.0.0.0:8090 in every key_validity_url and email link: refused.
func TestWildcardListenNeedsPublicBaseURL(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:8090", "[::]:8090", ":8090", "[::0]:443"} {
		_, err := Load("", []string{"HERALD_LISTEN=" + listen})
		if err == nil || !strings.HasPrefix(err.Error(), "config: public_base_url: must be set when listen is a wildcard address") || strings.Contains(err.Error(), "\n") {
			t.Errorf("listen %s without public_base_url: %v", listen, err)
		}
		if _, err := Load("", []string{"HERALD_LISTEN=" + listen, "HERALD_PUBLIC_BASE_URL=https://id.example.org", "HERALD_SERVER_NAME=id.example.org", "HERALD_SMTP_HOST=smtp.example.org"}); err != nil {
			t.Errorf("listen %s with public_base_url: %v", listen, err)
		}
	}
	for _, listen := range []string{"127.0.0.1:8090", "[::1]:8090", "id.example.org:8090", "10.1.2.3:80"} {
		if _, err := Load("", []string{"HERALD_LISTEN=" + listen, "HERALD_SMTP_HOST=smtp.example.org"}); err != nil {
			t.Errorf("listen %s: %v", listen, err)
		}
	}
}

func TestDefaultServerNameWarns(t *testing.T) {
	c, err := Load("", []string{"HERALD_PUBLIC_BASE_URL=https://id.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], "config: server_name: still the default \"localhost:8090\" while public_base_url names id.example.org") {
		t.Errorf("warnings %q", c.Warnings)
	}
	for _, env := range [][]string{
		{"HERALD_PUBLIC_BASE_URL=https://id.example.org", "HERALD_SERVER_NAME=id.example.org"},
		{"HERALD_PUBLIC_BASE_URL=http://localhost:8090"},
		nil,
	} {
		if c, err := Load("", env); err != nil || len(c.Warnings) != 0 {
			t.Errorf("%v: warnings %q, %v", env, c.Warnings, err)
		}
	}
}

// Onbind retries an invitee waiting in their client can live with: the
// first retry after 2 s, never more than 10 min apart.
func TestDeliveryBackoffDefaults(t *testing.T) {
	c := Default()
	if c.Delivery.MinBackoff.D() != 2*time.Second || c.Delivery.MaxBackoff.D() != 10*time.Minute {
		t.Fatalf("delivery backoff defaults %v..%v, want 2s..10m", c.Delivery.MinBackoff, c.Delivery.MaxBackoff)
	}
}
