package mailer

import (
	"bytes"
	"errors"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
)

// Methods the admin console needs (package admin, through internal/server).

// DeleteTo removes every stored message addressed to address (compared
// case-insensitively; To and Cc headers) or otherwise naming it, for
// data-protection erasure. It returns how many files it removed.
func (d *DevMailbox) DeleteTo(address string) (int, error) {
	want := strings.ToLower(strings.TrimSpace(address))
	if want == "" {
		return 0, errors.New("mailer: DeleteTo needs an address")
	}
	if d.pg != nil {
		return d.pg.deleteTo(want)
	}
	d.mu.Lock() // no new file gets its name while we look
	defer d.mu.Unlock()
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !validName(e.Name()) {
			continue
		}
		path := filepath.Join(d.dir, e.Name())
		raw, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !mentions(raw, want) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// mentions reports whether the message is to want (lower-cased) or carries
// it anywhere in its bytes.
func mentions(raw []byte, want string) bool {
	if msg, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		for _, h := range []string{"To", "Cc"} {
			list, _ := msg.Header.AddressList(h)
			for _, a := range list {
				if strings.ToLower(a.Address) == want {
					return true
				}
			}
		}
	}
	return bytes.Contains(bytes.ToLower(raw), []byte(want))
}
