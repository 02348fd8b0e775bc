package admin

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/matrix"
	"github.com/herald-im/herald/store"
)

// AuditEntry is one line of the audit log: who did what, when, to what.
type AuditEntry struct {
	At     time.Time `json:"at"`
	Who    string    `json:"who"`
	Action string    `json:"action"`
	Target string    `json:"target,omitempty"`
	Detail string    `json:"detail,omitempty"`
	OK     bool      `json:"ok"`
}

// emailLike matches anything shaped like an email address.
var emailLike = regexp.MustCompile(`[^\s<>"'(),;:\[\]@]+@[^\s<>"'(),;:\[\]@]+`)

// redactEmails shortens every address in s (matrix.RedactEmail): the audit
// log and the server log never hold an address in clear, whatever an error
// message or a mistyped login name carried.
func redactEmails(s string) string { return emailLike.ReplaceAllStringFunc(s, matrix.RedactEmail) }

// audit appends an entry. A failure to write is logged, never hidden from the log.
func (h *Handler) audit(who, action, target, detail string, ok bool) {
	target, detail = redactEmails(target), redactEmails(detail)
	if strings.Contains(who, "@") && !h.userExists(who) {
		who = redactEmails(who) // a name typed at the login form, not an account
	}
	e := AuditEntry{At: h.opts.Now().UTC(), Who: who, Action: action, Target: target, Detail: detail, OK: ok}
	raw, _ := json.Marshal(e)
	err := h.opts.DB.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktAudit)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		return b.Put(store.TimeKey(e.At, store.U64(seq)), raw)
	})
	if err != nil {
		h.opts.Log.Error("admin: cannot write audit log", "action", action, "err", err)
	}
	h.opts.Log.Info("admin action", "who", who, "action", action, "target", target, "ok", ok)
}

// Audit returns audit entries, newest first.
func (h *Handler) Audit(limit, offset int) ([]AuditEntry, error) {
	var out []AuditEntry
	err := h.opts.DB.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			if offset > 0 {
				offset--
				continue
			}
			var e AuditEntry
			if err := json.NewDecoder(bytes.NewReader(v)).Decode(&e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func itoa(i int) string { return strconv.Itoa(i) }
