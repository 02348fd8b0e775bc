package mailer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DevMailbox is the Sender used when no SMTP server is configured: each
// message becomes an .eml file in a directory (data_dir/mailbox), which a
// newcomer can open in a mail client or read in the admin console's Mailbox
// page (behind the console login: the mails hold validation codes and invite
// links, so nothing else serves them). With PostgreSQL the mails are rows
// of the shared database instead (devmailbox_pg.go, NewDevMailboxDB), so
// the console of any replica shows every replica's mail.
type DevMailbox struct {
	pg  *pgMailbox // set: the mailbox is in PostgreSQL, not in dir
	dir string
	now func() time.Time
	max int // files kept; the oldest go first

	mu    sync.Mutex
	seq   int
	count int // .eml files in dir, as far as this process knows
}

// DevMailboxMax is how many mails the dev mailbox keeps: the oldest are
// deleted beyond it, so mail that requests can cause (v1 requestToken is
// anonymous) never fills the disk.
const DevMailboxMax = 1000

// DevMail describes one stored message.
type DevMail struct {
	Name    string    `json:"name"` // file name, for Read
	To      string    `json:"to"`
	Subject string    `json:"subject"`
	Date    time.Time `json:"date"` // when it was written
	Size    int64     `json:"size"`
}

// NewDevMailbox creates dir if needed.
func NewDevMailbox(dir string) (*DevMailbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	d := &DevMailbox{dir: dir, now: time.Now, max: DevMailboxMax}
	names, err := d.names()
	if err != nil {
		return nil, fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	d.count = len(names)
	return d, nil
}

// names lists the mailbox's .eml files, oldest first (names start with the
// time they were written).
func (d *DevMailbox) names() ([]string, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && validName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// prune deletes the oldest files once the mailbox holds a tenth more than
// max, back down to max (so a directory listing is paid once per max/10
// mails, not per mail).
func (d *DevMailbox) prune() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count++
	if d.count <= d.max+d.max/10 {
		return
	}
	names, err := d.names()
	if err != nil {
		return
	}
	for _, n := range names[:max(0, len(names)-d.max)] {
		_ = os.Remove(filepath.Join(d.dir, n))
	}
	d.count = min(len(names), d.max)
}

// Dir is the directory holding the .eml files ("" when the mailbox is in
// the database).
func (d *DevMailbox) Dir() string { return d.dir }

// Send writes raw to a new .eml file (atomically: temp file, then rename).
func (d *DevMailbox) Send(ctx context.Context, from string, to []string, raw []byte) error {
	_, err := d.SendReply(ctx, from, to, raw)
	return err
}

// SendReply is Send, returning "saved as NAME" for the attempt record.
func (d *DevMailbox) SendReply(ctx context.Context, from string, to []string, raw []byte) (string, error) {
	d.mu.Lock()
	d.seq++
	name := fmt.Sprintf("%s-%04d.eml", d.now().UTC().Format("20060102T150405.000000000Z"), d.seq%10000)
	d.mu.Unlock()
	if d.pg != nil {
		// Replicas share the table: a random part keeps two replicas'
		// names apart even in the same nanosecond.
		name = strings.TrimSuffix(name, ".eml") + "-" + rand.Text()[:8] + ".eml"
		if err := d.pg.save(ctx, name, d.now(), raw); err != nil {
			return "", err
		}
		return "saved in the dev mailbox as " + name, nil
	}
	tmp, err := os.CreateTemp(d.dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(d.dir, name)); err != nil {
		return "", err
	}
	d.prune()
	return "saved in the dev mailbox as " + name, nil
}

func validName(name string) bool {
	return strings.HasSuffix(name, ".eml") && !strings.HasPrefix(name, ".") &&
		!strings.ContainsAny(name, `/\`) && filepath.Base(name) == name
}

// List returns the stored messages, newest first.
func (d *DevMailbox) List() ([]DevMail, error) {
	if d.pg != nil {
		return d.pg.list()
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, err
	}
	var out []DevMail
	for _, e := range entries {
		if e.IsDir() || !validName(e.Name()) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		dm := DevMail{Name: e.Name(), Date: info.ModTime(), Size: info.Size()}
		if f, err := os.Open(filepath.Join(d.dir, e.Name())); err == nil {
			dm.To, dm.Subject = devHeaders(f)
			f.Close()
		}
		out = append(out, dm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name > out[j].Name })
	return out, nil
}

// ErrNoSuchFile is returned by Read for an unknown or invalid name.
var ErrNoSuchFile = errors.New("mailer: no such message in the dev mailbox")

// Read returns the bytes of one stored message.
func (d *DevMailbox) Read(name string) ([]byte, error) {
	if !validName(name) {
		return nil, ErrNoSuchFile
	}
	if d.pg != nil {
		return d.pg.read(name)
	}
	b, err := os.ReadFile(filepath.Join(d.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoSuchFile
	}
	return b, err
}

// devHeaders reads the To and Subject a listing shows of a stored mail.
func devHeaders(r io.Reader) (to, subject string) {
	msg, err := mail.ReadMessage(r)
	if err != nil {
		return "", ""
	}
	return msg.Header.Get("To"), rawSubject([]byte("Subject: " + msg.Header.Get("Subject") + "\r\n\r\n"))
}
