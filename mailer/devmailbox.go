package mailer

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// DevMailbox is the Sender used when no SMTP server is configured: each
// message becomes an .eml file in a directory (data_dir/mailbox), which a
// newcomer can open in a mail client or read on /_herald/mailbox.
type DevMailbox struct {
	dir string
	now func() time.Time

	mu  sync.Mutex
	seq int
}

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
	return &DevMailbox{dir: dir, now: time.Now}, nil
}

// Dir is the directory holding the .eml files.
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
	return "saved in the dev mailbox as " + name, nil
}

func validName(name string) bool {
	return strings.HasSuffix(name, ".eml") && !strings.HasPrefix(name, ".") &&
		!strings.ContainsAny(name, `/\`) && filepath.Base(name) == name
}

// List returns the stored messages, newest first.
func (d *DevMailbox) List() ([]DevMail, error) {
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
			if msg, err := mail.ReadMessage(f); err == nil {
				dm.To = msg.Header.Get("To")
				dm.Subject = rawSubject([]byte("Subject: " + msg.Header.Get("Subject") + "\r\n\r\n"))
			}
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
	b, err := os.ReadFile(filepath.Join(d.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoSuchFile
	}
	return b, err
}

var devListTmpl = template.Must(template.New("list").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Herald dev mailbox</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd}
pre{white-space:pre-wrap;background:#f6f6f6;padding:1rem}iframe{width:100%;height:32rem;border:1px solid #ccc}</style></head>
<body><h1>Dev mailbox</h1>
<p>No SMTP server is configured (<code>smtp.host</code> is empty), so Herald keeps mail here instead of sending it.
Files are in <code>{{.Dir}}</code>.</p>
{{if .Mails}}<table><tr><th>Written</th><th>To</th><th>Subject</th></tr>
{{range .Mails}}<tr><td>{{.Date.Format "2006-01-02 15:04:05"}}</td><td>{{.To}}</td><td><a href="/_herald/mailbox/{{.Name}}">{{if .Subject}}{{.Subject}}{{else}}(no subject){{end}}</a></td></tr>
{{end}}</table>{{else}}<p>No mail yet.</p>{{end}}
</body></html>`))

var devMailTmpl = template.Must(template.New("mail").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.P.Subject}} - Herald dev mailbox</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}
dt{font-weight:bold}pre{white-space:pre-wrap;background:#f6f6f6;padding:1rem}iframe{width:100%;height:32rem;border:1px solid #ccc}</style></head>
<body><p><a href="/_herald/mailbox">&larr; all mail</a> · <a href="/_herald/mailbox/{{.Name}}?part=raw">raw</a></p>
<h1>{{.P.Subject}}</h1>
<dl>{{range .Headers}}<dt>{{.K}}</dt><dd>{{.V}}</dd>{{end}}</dl>
{{if .P.Text}}<h2>Text</h2><pre>{{.P.Text}}</pre>{{end}}
{{if .P.HTML}}<h2>HTML</h2><iframe sandbox="" referrerpolicy="no-referrer" src="/_herald/mailbox/{{.Name}}?part=html" title="HTML part"></iframe>{{end}}
</body></html>`))

// Handler serves the dev mailbox: GET /_herald/mailbox lists the messages,
// /_herald/mailbox/:name shows one (?part=html serves its HTML part in a
// script-less sandbox, ?part=raw the file). Register it on both routes. It is
// for development only: anyone who can reach it reads every mail.
func (d *DevMailbox) Handler() echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		name := c.Param("name")
		if name == "" {
			mails, err := d.List()
			if err != nil {
				return err
			}
			h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
			return render(c, devListTmpl, map[string]any{"Dir": d.dir, "Mails": mails})
		}
		raw, err := d.Read(name)
		if errors.Is(err, ErrNoSuchFile) {
			return echo.NewHTTPError(http.StatusNotFound, "no such message")
		}
		if err != nil {
			return err
		}
		switch c.QueryParam("part") {
		case "raw":
			h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
			return c.Blob(http.StatusOK, "text/plain; charset=utf-8", raw)
		case "html":
			p, err := Parse(raw)
			if err != nil {
				return echo.NewHTTPError(http.StatusUnprocessableEntity, "cannot parse message")
			}
			// A unique origin with no scripts, forms or plugins; images may load.
			h.Set("Content-Security-Policy", "sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'")
			return c.HTMLBlob(http.StatusOK, []byte(p.HTML))
		}
		p, err := Parse(raw)
		if err != nil {
			p = &Parsed{Text: string(raw)}
		}
		type kv struct{ K, V string }
		var hdrs []kv
		for _, k := range []string{"Date", "From", "To", "Subject", "Message-Id", "List-Unsubscribe"} {
			if v := p.Header.Get(k); v != "" {
				if k == "Subject" {
					v = p.Subject
				}
				hdrs = append(hdrs, kv{k, v})
			}
		}
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; frame-ancestors 'self'")
		return render(c, devMailTmpl, map[string]any{"Name": name, "P": p, "Headers": hdrs})
	}
}

func render(c echo.Context, t *template.Template, data any) error {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return err
	}
	return c.HTML(http.StatusOK, b.String())
}
