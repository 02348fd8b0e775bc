package admin

import (
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/store"
)

// pgAdmin keeps the console's data in the admin_* tables of migration 0003,
// shared by every replica: a session started on one is valid on all (they
// share the session signing key, admin_meta's hmac_key, and the session
// rows).
type pgAdmin struct{}

func (pgAdmin) open(db *store.DB) error {
	k, err := newHMACKey()
	if err != nil {
		return err
	}
	return db.Update(func(tx *store.Tx) error {
		// The first replica to start makes the key; the others keep it.
		_, err := tx.PG.Exec(tx.Context(), `INSERT INTO admin_meta (name, value) VALUES ('hmac_key', $1) ON CONFLICT (name) DO NOTHING`, k)
		return err
	})
}

func (pgAdmin) hmacKey(db *store.DB) ([]byte, error) {
	var k []byte
	err := db.View(func(tx *store.Tx) error {
		err := tx.PG.QueryRow(tx.Context(), `SELECT value FROM admin_meta WHERE name = 'hmac_key'`).Scan(&k)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return k, err
}

func (pgAdmin) getUser(tx *store.Tx, name string) (User, bool, error) {
	u := User{Username: name}
	err := tx.PG.QueryRow(tx.Context(), `SELECT password_hash, created FROM admin_users WHERE username = $1`, name).Scan(&u.PasswordHash, &u.Created)
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, false, nil
	}
	u.Created = u.Created.UTC()
	return u, err == nil, err
}

func (pgAdmin) putUser(tx *store.Tx, u User) error {
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO admin_users (username, password_hash, created) VALUES ($1, $2, $3)
		ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, created = excluded.created`,
		u.Username, u.PasswordHash, u.Created)
	return err
}

func (pgAdmin) deleteUser(tx *store.Tx, name string) (bool, error) {
	c := tx.Context()
	tag, err := tx.PG.Exec(c, `DELETE FROM admin_users WHERE username = $1`, name)
	if err != nil || tag.RowsAffected() == 0 {
		return false, err
	}
	_, err = tx.PG.Exec(c, `DELETE FROM admin_sessions WHERE username = $1`, name)
	return true, err
}

func (pgAdmin) users(tx *store.Tx) ([]User, error) {
	rows, err := tx.PG.Query(tx.Context(), `SELECT username, password_hash, created FROM admin_users ORDER BY username`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (User, error) {
		var u User
		err := row.Scan(&u.Username, &u.PasswordHash, &u.Created)
		u.Created = u.Created.UTC()
		return u, err
	})
}

func (pgAdmin) hasUser(tx *store.Tx) (bool, error) {
	var found bool
	err := tx.PG.QueryRow(tx.Context(), `SELECT EXISTS (SELECT 1 FROM admin_users)`).Scan(&found)
	return found, err
}

func (pgAdmin) putSession(tx *store.Tx, sid string, s session, now time.Time) error {
	c := tx.Context()
	if _, err := tx.PG.Exec(c, `DELETE FROM admin_sessions WHERE expires < $1`, now); err != nil {
		return err
	}
	_, err := tx.PG.Exec(c, `INSERT INTO admin_sessions (id, username, created, expires) VALUES ($1, $2, $3, $4)`, sid, s.User, s.Created, s.Expires)
	return err
}

func (pgAdmin) getSession(tx *store.Tx, sid string) (session, bool, error) {
	var s session
	err := tx.PG.QueryRow(tx.Context(), `SELECT username, created, expires FROM admin_sessions WHERE id = $1`, sid).Scan(&s.User, &s.Created, &s.Expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	s.Created, s.Expires = s.Created.UTC(), s.Expires.UTC()
	return s, err == nil, err
}

func (pgAdmin) deleteSession(tx *store.Tx, sid string) error {
	_, err := tx.PG.Exec(tx.Context(), `DELETE FROM admin_sessions WHERE id = $1`, sid)
	return err
}

// appendAudit inserts the entry and counts it in admin_audit_count, the
// one-row count the bounds use. Audit entries come from console actions and
// the once-a-minute count of refused logins, so the row is never hot.
func (pgAdmin) appendAudit(tx *store.Tx, e AuditEntry) error {
	c := tx.Context()
	if _, err := tx.PG.Exec(c, `INSERT INTO admin_audit (at, who, action, target, detail, ok) VALUES ($1, $2, $3, $4, $5, $6)`,
		e.At, e.Who, e.Action, e.Target, e.Detail, e.OK); err != nil {
		return err
	}
	_, err := tx.PG.Exec(c, `UPDATE admin_audit_count SET n = n + 1`)
	return err
}

func (pgAdmin) pruneAudit(tx *store.Tx, cutoff time.Time, max, _ int) (int, error) {
	c := tx.Context()
	var n int
	if err := tx.PG.QueryRow(c, `SELECT n FROM admin_audit_count`).Scan(&n); err != nil {
		return 0, err
	}
	dropped := int64(0)
	if !cutoff.IsZero() {
		tag, err := tx.PG.Exec(c, `DELETE FROM admin_audit WHERE at < $1`, cutoff)
		if err != nil {
			return n, err
		}
		dropped += tag.RowsAffected()
	}
	if max > 0 && n-int(dropped) > max {
		tag, err := tx.PG.Exec(c, `DELETE FROM admin_audit WHERE id IN (SELECT id FROM admin_audit ORDER BY id LIMIT $1)`, n-int(dropped)-max)
		if err != nil {
			return n, err
		}
		dropped += tag.RowsAffected()
	}
	if dropped > 0 {
		if err := tx.PG.QueryRow(c, `UPDATE admin_audit_count SET n = n - $1 RETURNING n`, dropped).Scan(&n); err != nil {
			return 0, err
		}
	}
	return n, nil
}

func (pgAdmin) countAudit(tx *store.Tx) (int, error) {
	var n int
	err := tx.PG.QueryRow(tx.Context(), `SELECT n FROM admin_audit_count`).Scan(&n)
	return n, err
}

func (pgAdmin) audit(tx *store.Tx, limit, offset int) ([]AuditEntry, error) {
	rows, err := tx.PG.Query(tx.Context(), `SELECT at, who, action, target, detail, ok FROM admin_audit ORDER BY id DESC LIMIT $1 OFFSET $2`, limit, offset)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanAudit)
}

func scanAudit(row pgx.CollectableRow) (AuditEntry, error) {
	var e AuditEntry
	err := row.Scan(&e.At, &e.Who, &e.Action, &e.Target, &e.Detail, &e.OK)
	e.At = e.At.UTC()
	return e, err
}

func (pgAdmin) sessions(tx *store.Tx) ([]storedSession, error) {
	rows, err := tx.PG.Query(tx.Context(), `SELECT id, username, created, expires FROM admin_sessions ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (storedSession, error) {
		var s storedSession
		err := row.Scan(&s.ID, &s.User, &s.Created, &s.Expires)
		s.Created, s.Expires = s.Created.UTC(), s.Expires.UTC()
		return s, err
	})
}

func (pgAdmin) setHMACKey(tx *store.Tx, k []byte) error {
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO admin_meta (name, value) VALUES ('hmac_key', $1)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`, k)
	return err
}
