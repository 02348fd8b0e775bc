package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With no smtp.host, a listener beyond loopback needs smtp.dev_mailbox: true
// (the point 2: a public dev mailbox leaked validation codes), and
// the audit log's bounds must be set.
func TestDevMailboxAndAuditKeys(t *testing.T) {
	for _, c := range []struct {
		yml     string
		wantKey string // "" : valid
	}{
		{"listen: 127.0.0.1:8090", ""},
		{"listen: '[::1]:8090'", ""},
		{"listen: localhost:8090", ""},
		{"listen: 0.0.0.0:8090", "smtp.dev_mailbox"},
		{"listen: ':8090'", "smtp.dev_mailbox"},
		{"listen: '[::]:8090'", "smtp.dev_mailbox"},
		{"listen: 192.0.2.10:8090", "smtp.dev_mailbox"},
		{"listen: id.example.org:8090", "smtp.dev_mailbox"},
		{"admin: {listen: 0.0.0.0:8091}", "smtp.dev_mailbox"},
		{"listen: 0.0.0.0:8090\nsmtp: {dev_mailbox: true}", ""},
		{"listen: 0.0.0.0:8090\nsmtp: {host: smtp.example.org}", ""},
		{"admin: {audit_retention: 0}", "admin.audit_retention"},
		{"admin: {audit_max_entries: 10}", "admin.audit_max_entries"},
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		// A wildcard listen also needs public_base_url (a rule of its own).
		yml := "public_base_url: https://id.example.org\nserver_name: id.example.org\n" + c.yml
		if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path, nil)
		switch {
		case c.wantKey == "" && err != nil:
			t.Errorf("%q: %v, want valid", c.yml, err)
		case c.wantKey != "" && (err == nil || !strings.Contains(err.Error(), c.wantKey) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%q: %v, want one line naming %s", c.yml, err, c.wantKey)
		}
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("listen: 0.0.0.0:8090\npublic_base_url: https://id.example.org"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, []string{"HERALD_SMTP_DEV_MAILBOX=true"}); err != nil {
		t.Errorf("HERALD_SMTP_DEV_MAILBOX=true: %v", err)
	}
}
