package mailer_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/mailer"
)

func TestFromConfig(t *testing.T) {
	c := config.Default()
	c.DataDir = t.TempDir()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s, dev, err := mailer.FromConfig(&c)
	if err != nil {
		t.Fatal(err)
	}
	if dev == nil || s != mailer.Sender(dev) || dev.Dir() != filepath.Join(c.DataDir, "mailbox") {
		t.Fatalf("no smtp.host: sender %T, dev %v", s, dev)
	}
	o := mailer.OptionsFromConfig(&c, s)
	if o.From != c.SMTP.From || o.GiveUpAfter != 48*time.Hour || o.MaxBackoff != time.Hour || o.Retention != 30*24*time.Hour {
		t.Errorf("options = %+v", o)
	}

	c.SMTP.Host, c.SMTP.Security = "smtp.example.org", "tls"
	s, dev, err = mailer.FromConfig(&c)
	if err != nil || dev != nil {
		t.Fatal(err)
	}
	if ss, ok := s.(*mailer.SMTPPool); !ok || ss.Addr() != "smtp.example.org:465" || ss.Size() != 16 {
		t.Errorf("sender = %#v", s)
	}
}
