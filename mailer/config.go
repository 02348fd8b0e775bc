package mailer

import (
	"time"

	"path/filepath"

	"github.com/herald-im/herald/config"
)

// DevMailboxDir is the dev mailbox directory inside data_dir.
const DevMailboxDir = "mailbox"

// FromConfig builds the Sender for c: an SMTPPool of smtp.connections for smtp.host, or, when
// smtp.host is empty, a DevMailbox in data_dir/mailbox (then dev is that
// mailbox, for the console's Mailbox page).
func FromConfig(c *config.Config) (s Sender, dev *DevMailbox, err error) {
	if c.SMTP.Host == "" {
		dev, err = NewDevMailbox(filepath.Join(c.DataDir, DevMailboxDir))
		return dev, dev, err
	}
	return NewSMTPPool(SMTPConfig{
		Host:               c.SMTP.Host,
		Port:               c.SMTPPort(),
		Security:           c.SMTP.Security,
		Username:           c.SMTP.Username,
		Password:           string(c.SMTP.Password),
		InsecureSkipVerify: c.SMTP.InsecureSkipVerify,
		Timeout:            c.SMTP.Timeout.D(),
	}, c.SMTP.Connections), nil, nil
}

// OptionsFromConfig is the Queue configuration for c with sender s
// (smtp.from, smtp.connections, smtp.max_backoff, smtp.validation_max_backoff,
// smtp.give_up_after, email.outbox_retention).
func OptionsFromConfig(c *config.Config, s Sender) Options {
	return Options{
		Sender:      s,
		From:        c.SMTP.From,
		Connections: c.SMTP.Connections,
		MaxBackoff:  c.SMTP.MaxBackoff.D(),
		GiveUpAfter: c.SMTP.GiveUpAfter.D(),
		Retention:   c.Email.OutboxRetention.D(),
		// A validation code is wanted within minutes: retry its mail often.
		KindMaxBackoff: map[string]time.Duration{"validation": c.SMTP.ValidationMaxBackoff.D()},
	}
}
