package admin

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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

// The most an audit entry's fields hold: longer values are cut (with "…").
// With admin.audit_max_entries this bounds the audit log's size.
const (
	maxAuditWho    = MaxUsernameBytes
	maxAuditTarget = 512
	maxAuditDetail = 1024
)

// clip cuts s to at most n bytes on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n-len("…")]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// audit appends an entry. A failure to write is logged, never hidden from the log.
func (h *Handler) audit(who, action, target, detail string, ok bool) {
	target, detail = redactEmails(target), redactEmails(detail)
	if strings.Contains(who, "@") && !h.userExists(who) {
		who = redactEmails(who) // a name typed at the login form, not an account
	}
	who, target, detail = clip(who, maxAuditWho), clip(target, maxAuditTarget), clip(detail, maxAuditDetail)
	e := AuditEntry{At: h.opts.Now().UTC(), Who: who, Action: action, Target: target, Detail: detail, OK: ok}
	if err := h.appendAudit(e); err != nil {
		h.opts.Log.Error("admin: cannot write audit log", "action", action, "err", err)
	}
	h.opts.Log.Info("admin action", "who", who, "action", action, "target", target, "ok", ok)
}

// appendAudit stores e and, in the same transaction, deletes the entries
// past admin.audit_retention or beyond admin.audit_max_entries.
func (h *Handler) appendAudit(e AuditEntry) error {
	h.auditMu.Lock()
	defer h.auditMu.Unlock()
	st := storeFor(h.opts.DB)
	n := h.auditN
	err := h.opts.DB.Update(func(tx *store.Tx) error {
		if err := st.appendAudit(tx, e); err != nil {
			return err
		}
		var err error
		n, err = h.pruneAudit(tx, st, h.auditN+1)
		return err
	})
	if err == nil {
		h.auditN = n
	}
	return err
}

// pruneAudit applies the retention and the maximum to the log holding n
// entries; it returns the count left.
func (h *Handler) pruneAudit(tx *store.Tx, st adminStore, n int) (int, error) {
	cfg := h.opts.Config.Admin
	var cutoff time.Time
	if cfg.AuditRetention > 0 {
		cutoff = h.opts.Now().Add(-cfg.AuditRetention.D())
	}
	return st.pruneAudit(tx, cutoff, cfg.AuditMaxEntries, n)
}

// PruneAudit applies admin.audit_retention and admin.audit_max_entries now:
// one pass. Run calls it hourly, or the wiring does (see
// Options.AuditPruneElsewhere); New calls it too, and every write applies
// them.
func (h *Handler) PruneAudit() error {
	h.auditMu.Lock()
	defer h.auditMu.Unlock()
	st := storeFor(h.opts.DB)
	n := h.auditN
	err := h.opts.DB.Update(func(tx *store.Tx) error {
		var err error
		n, err = h.pruneAudit(tx, st, h.auditN)
		return err
	})
	if err == nil {
		h.auditN = n
	}
	return err
}

// PruneAuditContext is PruneAudit in the form periodic jobs take.
func (h *Handler) PruneAuditContext(context.Context) error { return h.PruneAudit() }

// countAudit counts the stored entries once, at start-up.
func (h *Handler) countAudit() error {
	h.auditMu.Lock()
	defer h.auditMu.Unlock()
	st := storeFor(h.opts.DB)
	return h.opts.DB.View(func(tx *store.Tx) error {
		var err error
		h.auditN, err = st.countAudit(tx)
		return err
	})
}

// Why a login attempt was refused without being checked.
const (
	refusedRateLimited = "rate limited"
	refusedTooLong     = "username or password too long"
)

// refusalFlushEvery is the most often refused login attempts make an audit
// entry and a log line.
const refusalFlushEvery = time.Minute

// refusals counts login attempts refused before any check (too long, rate
// limited). Writing each to the audit log and the server log would let
// anyone grow both without bound; they are counted, and the count is written
// as one entry at most once a minute (and when the server stops).
type refusals struct {
	mu    sync.Mutex
	n     map[string]int
	since time.Time // first refusal counted in n
	last  time.Time // last time a count was written
}

// refused counts one refused attempt, writing the count if the last was
// written more than refusalFlushEvery ago.
func (h *Handler) refused(reason string) {
	now := h.opts.Now()
	r := &h.refusals
	r.mu.Lock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	if len(r.n) == 0 {
		r.since = now
	}
	r.n[reason]++
	due := now.Sub(r.last) >= refusalFlushEvery
	r.mu.Unlock()
	if due {
		h.flushRefusals()
	}
}

// flushRefusals writes the refused attempts counted so far as one audit
// entry and one log line; nothing when there are none.
func (h *Handler) flushRefusals() {
	now := h.opts.Now()
	r := &h.refusals
	r.mu.Lock()
	counts, since := r.n, r.since
	r.n, r.last = nil, now
	r.mu.Unlock()
	full := h.limiter.takeFull()
	if len(counts) == 0 && full == 0 {
		return
	}
	total := 0
	var parts []string
	for _, reason := range []string{refusedRateLimited, refusedTooLong} {
		if counts[reason] > 0 {
			total += counts[reason]
			parts = append(parts, fmt.Sprintf("%d %s", counts[reason], reason))
		}
	}
	detail := fmt.Sprintf("%d login attempts refused since %s: %s", total, since.UTC().Format(time.RFC3339), strings.Join(parts, ", "))
	if full > 0 {
		detail += fmt.Sprintf("; %d attempts found the login limiter full (more than %d clients at once) and shared one budget", full, limiterCapacity)
	}
	e := AuditEntry{At: now.UTC(), Who: "-", Action: "login refused", Detail: detail}
	if err := h.appendAudit(e); err != nil {
		h.opts.Log.Error("admin: cannot write audit log", "action", e.Action, "err", err)
	}
	h.opts.Log.Warn("admin: login attempts refused", "rate_limited", counts[refusedRateLimited], "too_long", counts[refusedTooLong], "limiter_full", full)
}

// Run applies the audit log's retention hourly (unless
// Options.AuditPruneElsewhere) and writes the count of
// refused login attempts every minute, until ctx is done (then once more).
func (h *Handler) Run(ctx context.Context) {
	t := time.NewTicker(refusalFlushEvery)
	defer t.Stop()
	lastPrune := h.opts.Now()
	for {
		select {
		case <-ctx.Done():
			h.flushRefusals()
			return
		case <-t.C:
			h.flushRefusals()
			if now := h.opts.Now(); now.Sub(lastPrune) >= time.Hour && !h.opts.AuditPruneElsewhere {
				lastPrune = now
				if err := h.PruneAudit(); err != nil {
					h.opts.Log.Error("admin: pruning the audit log", "err", err)
				}
			}
		}
	}
}

// Audit returns audit entries, newest first.
func (h *Handler) Audit(limit, offset int) ([]AuditEntry, error) {
	var out []AuditEntry
	st := storeFor(h.opts.DB)
	err := h.opts.DB.View(func(tx *store.Tx) error {
		var err error
		out, err = st.audit(tx, limit, offset)
		return err
	})
	return out, err
}
