package mailer

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/herald-im/herald/queue"
)

// The console's read models and read service for the outbox and the dev
// mailbox. The admin console uses these types as they are (their JSON is the
// console API's) through its Outbox and Mailbox interfaces, which Console
// and MailboxConsole implement.

// ViewStates are the states the console filters the outbox by.
var ViewStates = []string{string(Pending), string(Sent), string(Failed)}

// View is a queued mail as the console shows it (never its body).
type View struct {
	ID          string              `json:"id"`
	To          string              `json:"to"`
	Subject     string              `json:"subject"`
	Kind        string              `json:"kind,omitempty"`
	Ref         string              `json:"ref,omitempty"`
	State       string              `json:"state"`
	Created     time.Time           `json:"created"`
	NextAttempt time.Time           `json:"next_attempt,omitzero"`
	Attempts    []queue.AttemptView `json:"attempts"`
}

// View is m as the console shows it.
func (m Mail) View() View {
	out := View{ID: strconv.FormatUint(m.ID, 10), To: m.To, Subject: m.Subject, Kind: m.Kind, Ref: m.Ref, State: string(m.State), Created: m.Created}
	if m.State == Pending {
		out.NextAttempt = m.NextAttempt
	}
	for _, at := range m.Attempts {
		out.Attempts = append(out.Attempts, queue.AttemptView{At: at.At, Reply: at.Reply, OK: at.OK, Temporary: at.Temporary})
	}
	return out
}

// Console is the console's service over the outbox.
type Console struct{ q *Queue }

// NewConsole returns the console's service over q.
func NewConsole(q *Queue) *Console { return &Console{q: q} }

func parseMailID(id string) (uint64, error) {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("id %q: %w", id, ErrNotFound)
	}
	return n, nil
}

// ListMail lists mails newest first.
func (c *Console) ListMail(_ context.Context, f queue.ViewFilter) ([]View, error) {
	l, err := c.q.List(Filter{State: State(f.State), Limit: f.Limit, Offset: f.Offset})
	var out []View
	for _, m := range l {
		out = append(out, m.View())
	}
	return out, err
}

// GetMail returns one mail.
func (c *Console) GetMail(_ context.Context, id string) (View, error) {
	n, err := parseMailID(id)
	if err != nil {
		return View{}, err
	}
	m, err := c.q.Get(n)
	return m.View(), err
}

// MailByRef returns the mails of ref (e.g. "invite:12"), oldest first.
func (c *Console) MailByRef(_ context.Context, ref string) ([]View, error) {
	l, err := c.q.ByRef(ref)
	var out []View
	for i := len(l) - 1; i >= 0; i-- { // oldest first
		out = append(out, l[i].View())
	}
	return out, err
}

// RetryMail attempts a mail again.
func (c *Console) RetryMail(_ context.Context, id string) error {
	n, err := parseMailID(id)
	if err != nil {
		return err
	}
	return c.q.Retry(n)
}

// DropMail cancels a mail (ErrNotFound for an unknown id).
func (c *Console) DropMail(_ context.Context, id string) error {
	n, err := parseMailID(id)
	if err != nil {
		return err
	}
	if _, err := c.q.Get(n); err != nil {
		return err
	}
	return c.q.Drop(n)
}

// MailStats summarises the outbox.
func (c *Console) MailStats(context.Context) (queue.StatsView, error) {
	s, err := c.q.Stats()
	return queue.StatsView{Pending: s.Pending, Done: s.Sent, Failed: s.Failed, FailedAttempts24h: s.FailedAttempts}, err
}

// DeleteMailTo deletes the mails to address.
func (c *Console) DeleteMailTo(_ context.Context, address string) (int, error) {
	return c.q.DeleteByRecipient(address)
}

// DevMailView is a mail of the dev mailbox as the console shows it: its
// text and HTML are filled by ReadDevMail.
type DevMailView struct {
	ID      string    `json:"id"`
	To      string    `json:"to"`
	Subject string    `json:"subject"`
	Date    time.Time `json:"date"`
	Text    string    `json:"text,omitempty"`
	HTML    string    `json:"html,omitempty"`
}

// MailboxConsole is the console's service over the dev mailbox.
type MailboxConsole struct{ m *DevMailbox }

// NewMailboxConsole returns the console's service over m.
func NewMailboxConsole(m *DevMailbox) *MailboxConsole { return &MailboxConsole{m: m} }

// ListDevMail lists the mailbox, newest first.
func (c *MailboxConsole) ListDevMail(context.Context) ([]DevMailView, error) {
	l, err := c.m.List()
	var out []DevMailView
	for _, d := range l {
		out = append(out, DevMailView{ID: d.Name, To: d.To, Subject: d.Subject, Date: d.Date})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Date.After(out[j].Date) })
	return out, err
}

// DeleteDevMailTo deletes the mails addressed to (or naming) address.
func (c *MailboxConsole) DeleteDevMailTo(_ context.Context, address string) (int, error) {
	return c.m.DeleteTo(address)
}

// ReadDevMail reads one mail, decoded (its raw text when it does not parse).
func (c *MailboxConsole) ReadDevMail(_ context.Context, id string) (DevMailView, error) {
	raw, err := c.m.Read(id)
	if err != nil {
		return DevMailView{}, err
	}
	p, err := Parse(raw)
	if err != nil {
		return DevMailView{ID: id, Text: string(raw)}, nil
	}
	out := DevMailView{ID: id, To: p.Header.Get("To"), Subject: p.Subject, Text: p.Text, HTML: p.HTML}
	if d, err := p.Header.Date(); err == nil {
		out.Date = d
	}
	return out, nil
}
