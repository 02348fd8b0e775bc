package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/herald-im/herald/store"
)

// CopyStorage copies the console's accounts, sessions, session signing key
// and audit log from src to dst (`herald migrate-storage`), in batches of
// at most 1,000 records per destination transaction; dst's admin tables
// must be empty. Sessions and the key are copied, so consoles stay logged
// in across the move.
func CopyStorage(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	from, to := storeFor(src), storeFor(dst)
	if err := to.open(dst); err != nil {
		return err
	}
	var (
		users    []User
		sessions []storedSession
		audit    []AuditEntry
	)
	key, err := from.hmacKey(src)
	if err != nil {
		return err
	}
	if err := src.ViewContext(ctx, func(tx *store.Tx) error {
		var err error
		if users, err = from.users(tx); err != nil {
			return err
		}
		if sessions, err = from.sessions(tx); err != nil {
			return err
		}
		n, err := from.countAudit(tx)
		if err != nil {
			return err
		}
		audit, err = from.audit(tx, n, 0)
		return err
	}); err != nil {
		return fmt.Errorf("admin: reading: %w", err)
	}
	// One write per record, oldest audit entry first, in batches.
	var writes []func(tx *store.Tx) error
	if len(key) > 0 {
		writes = append(writes, func(tx *store.Tx) error { return to.setHMACKey(tx, key) })
	}
	for _, u := range users {
		writes = append(writes, func(tx *store.Tx) error { return to.putUser(tx, u) })
	}
	for _, s := range sessions {
		writes = append(writes, func(tx *store.Tx) error { return to.putSession(tx, s.ID, s.session, time.Time{}) })
	}
	for i := len(audit) - 1; i >= 0; i-- {
		e := audit[i]
		writes = append(writes, func(tx *store.Tx) error { return to.appendAudit(tx, e) })
	}
	for len(writes) > 0 {
		batch := writes[:min(store.CopyBatch, len(writes))]
		writes = writes[len(batch):]
		if err := dst.UpdateContext(ctx, func(tx *store.Tx) error {
			for _, w := range batch {
				if err := w(tx); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("admin: writing: %w", err)
		}
		if progress != nil {
			progress(len(batch))
		}
	}
	return nil
}

// us is t as both backends keep it to the microsecond, for sums.
func us(t time.Time) string { return t.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano) }

// SumStorage sums the console's records (admin_users, admin_sessions,
// admin_meta, admin_audit), identically on both backends: accounts and
// sessions in byte order of their keys, audit entries oldest first.
func SumStorage(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	st := storeFor(db)
	users, sessions, meta, audit := store.NewSummer("admin_users"), store.NewSummer("admin_sessions"), store.NewSummer("admin_meta"), store.NewSummer("admin_audit")
	add := func(s *store.Summer, v ...any) {
		raw, _ := json.Marshal(v)
		s.Add(raw)
	}
	key, err := st.hmacKey(db)
	if err != nil {
		return nil, err
	}
	if len(key) > 0 {
		add(meta, "hmac_key", key)
	}
	err = db.ViewContext(ctx, func(tx *store.Tx) error {
		us_, err := st.users(tx)
		if err != nil {
			return err
		}
		sort.Slice(us_, func(i, j int) bool { return us_[i].Username < us_[j].Username })
		for _, u := range us_ {
			add(users, u.Username, u.PasswordHash, us(u.Created))
		}
		ss, err := st.sessions(tx)
		if err != nil {
			return err
		}
		sort.Slice(ss, func(i, j int) bool { return ss[i].ID < ss[j].ID })
		for _, s := range ss {
			add(sessions, s.ID, s.User, us(s.Created), us(s.Expires))
		}
		n, err := st.countAudit(tx)
		if err != nil {
			return err
		}
		es, err := st.audit(tx, n, 0)
		if err != nil {
			return err
		}
		for i := len(es) - 1; i >= 0; i-- {
			e := es[i]
			add(audit, us(e.At), e.Who, e.Action, e.Target, e.Detail, e.OK)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []store.TableSum{users.Sum(), sessions.Sum(), meta.Sum(), audit.Sum()}, nil
}
