package identity

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// pgStorage keeps the identity records in PostgreSQL (tables of
// pgstore/migrations/0004_identity.sql), shared by every replica. The only
// thing cached is the hash index's in-memory copy (lookupcache_pg.go), which
// every lookup brings up to date with the database before it answers.
type pgStorage struct {
	cache pgLookupCache
}

// PepperChannel is the NOTIFY channel a pepper change is announced on: a
// replica that hears it calls Refresh.
const PepperChannel = "identity_pepper"

func (st *pgStorage) setup(*store.DB) error { return nil }

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// ---- accounts and terms ----

func (st *pgStorage) account(tx *store.Tx, key []byte) (*Account, error) {
	var a Account
	var last, expired *time.Time
	err := tx.PG.QueryRow(tx.Context(), `SELECT user_id, created, last_used, expired FROM identity_accounts WHERE token_hash = $1`, key).
		Scan(&a.UserID, &a.Created, &last, &expired)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	a.Created, a.LastUsed, a.Expired = a.Created.UTC(), fromNull(last), fromNull(expired)
	return &a, nil
}

func (st *pgStorage) putAccount(tx *store.Tx, key []byte, a *Account) error {
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_accounts (token_hash, user_id, created, last_used, expired)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (token_hash) DO UPDATE SET user_id = excluded.user_id, created = excluded.created,
			last_used = excluded.last_used, expired = excluded.expired`,
		key, a.UserID, a.Created, nullTime(a.LastUsed), nullTime(a.Expired))
	return err
}

func (st *pgStorage) deleteAccount(tx *store.Tx, key []byte) error {
	_, err := tx.PG.Exec(tx.Context(), `DELETE FROM identity_accounts WHERE token_hash = $1`, key)
	return err
}

// expireTokens runs the sweep's three steps as set statements, each through
// its partial index, in batches of sweepBatch rows per transaction.
func (st *pgStorage) expireTokens(db *store.DB, now time.Time, d time.Duration) (expired, deleted int, err error) {
	cutoff := now.Add(-d)
	steps := []struct {
		n    *int
		sql  string
		args []any
	}{
		// Tombstones older than one more lifetime go.
		{&deleted, `DELETE FROM identity_accounts WHERE token_hash IN (
			SELECT token_hash FROM identity_accounts WHERE expired IS NOT NULL AND expired < $1 LIMIT $2)`,
			[]any{cutoff, sweepBatch}},
		// Records from before last use was recorded start their clock.
		{nil, `UPDATE identity_accounts SET last_used = $1 WHERE token_hash IN (
			SELECT token_hash FROM identity_accounts WHERE expired IS NULL AND last_used IS NULL LIMIT $2)`,
			[]any{now, sweepBatch}},
		// Tokens unused past the lifetime become tombstones.
		{&expired, `UPDATE identity_accounts SET user_id = '', expired = $2 WHERE token_hash IN (
			SELECT token_hash FROM identity_accounts WHERE expired IS NULL AND last_used < $1 LIMIT $3)`,
			[]any{cutoff, now, sweepBatch}},
	}
	for _, step := range steps {
		for {
			var n int64
			err := db.Update(func(tx *store.Tx) error {
				tag, err := tx.PG.Exec(tx.Context(), step.sql, step.args...)
				n = tag.RowsAffected()
				return err
			})
			if err != nil {
				return expired, deleted, err
			}
			if step.n != nil {
				*step.n += int(n)
			}
			if n < sweepBatch {
				break
			}
		}
	}
	return expired, deleted, nil
}

// sweepBatch bounds the rows one transaction of a sweep changes.
const sweepBatch = 1000

func (st *pgStorage) terms(tx *store.Tx, userID string) (map[string]bool, error) {
	rows, err := tx.PG.Query(tx.Context(), `SELECT policy, version FROM identity_terms WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	accepted := map[string]bool{}
	var p, v string
	_, err = pgx.ForEachRow(rows, []any{&p, &v}, func() error {
		accepted[p+"\x00"+v] = true
		return nil
	})
	return accepted, err
}

// putTerms adds what is not stored yet (acceptances only ever add up).
func (st *pgStorage) putTerms(tx *store.Tx, userID string, accepted map[string]bool) error {
	var policies, versions []string
	for k, ok := range accepted {
		if p, v, cut := strings.Cut(k, "\x00"); ok && cut {
			policies, versions = append(policies, p), append(versions, v)
		}
	}
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_terms (user_id, policy, version)
		SELECT $1, p, v FROM unnest($2::text[], $3::text[]) AS t(p, v) ON CONFLICT DO NOTHING`, userID, policies, versions)
	return err
}

// ---- bindings ----

const bindingCols = `medium, address, mxid, not_before, not_after, ts`

func scanBinding(row pgx.Row) (*Binding, error) {
	var b Binding
	if err := row.Scan(&b.Medium, &b.Address, &b.MXID, &b.NotBefore, &b.NotAfter, &b.TS); err != nil {
		return nil, err
	}
	b.NotBefore, b.NotAfter, b.TS = b.NotBefore.UTC(), b.NotAfter.UTC(), b.TS.UTC()
	return &b, nil
}

func (st *pgStorage) binding(tx *store.Tx, medium, address string) (*Binding, error) {
	b, err := scanBinding(tx.PG.QueryRow(tx.Context(), `SELECT `+bindingCols+` FROM identity_bindings WHERE medium = $1 AND address = $2`, medium, address))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return b, err
}

// queueBinding is binding queued on tx (see Service.QueueBinding).
func (st *pgStorage) queueBinding(tx *store.Tx, medium, address string, out **Binding) error {
	return tx.QueueRow(func(row pgx.Row) error {
		b, err := scanBinding(row)
		if errors.Is(err, pgx.ErrNoRows) {
			b, err = nil, nil
		}
		*out = b
		return err
	}, `SELECT `+bindingCols+` FROM identity_bindings WHERE medium = $1 AND address = $2`, medium, address)
}

// bindings is one statement for all of refs (the primary key, once per ref).
func (st *pgStorage) bindings(tx *store.Tx, refs []bindingRef) ([]*Binding, error) {
	media, addrs := make([]string, len(refs)), make([]string, len(refs))
	for i, r := range refs {
		media[i], addrs[i] = r.Medium, r.Address
	}
	rows, err := tx.PG.Query(tx.Context(), `SELECT `+bindingCols+` FROM identity_bindings
		WHERE (medium, address) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, media, addrs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := map[bindingRef]*Binding{}
	for rows.Next() {
		b, err := scanBinding(rows)
		if err != nil {
			return nil, err
		}
		got[bindingRef{b.Medium, b.Address}] = b
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]*Binding, len(refs))
	for i, r := range refs {
		out[i] = got[r]
	}
	return out, nil
}

// putBinding upserts the row and, for a new address, adds 1 to the count
// (xmax is 0 on a row the statement inserted).
func (st *pgStorage) putBinding(tx *store.Tx, b *Binding) error {
	var inserted bool
	err := tx.PG.QueryRow(tx.Context(), `INSERT INTO identity_bindings (`+bindingCols+`) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (medium, address) DO UPDATE SET mxid = excluded.mxid, not_before = excluded.not_before,
			not_after = excluded.not_after, ts = excluded.ts
		RETURNING xmax = 0`, b.Medium, b.Address, b.MXID, b.NotBefore, b.NotAfter, b.TS).Scan(&inserted)
	if err != nil || !inserted {
		return err
	}
	_, err = tx.PG.Exec(tx.Context(), `INSERT INTO identity_binding_count_deltas (n) VALUES (1)`)
	return err
}

func (st *pgStorage) deleteBinding(tx *store.Tx, medium, address string) error {
	tag, err := tx.PG.Exec(tx.Context(), `DELETE FROM identity_bindings WHERE medium = $1 AND address = $2`, medium, address)
	if err != nil || tag.RowsAffected() == 0 {
		return err
	}
	_, err = tx.PG.Exec(tx.Context(), `INSERT INTO identity_binding_count_deltas (n) VALUES (-1)`)
	return err
}

func (st *pgStorage) putHash(tx *store.Tx, h [32]byte, mxid string) error {
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_lookup_hashes (hash, mxid) VALUES ($1, $2)
		ON CONFLICT (hash) DO UPDATE SET mxid = excluded.mxid`, h[:], mxid)
	if err != nil {
		return err
	}
	return logLookupChange(tx, h[:], &mxid)
}

// forgetHashChanges empties the change log of the replicas' lookup copies
// (lookupcache_pg.go), which keeps the hashes of the last hour's binds and
// unbinds, and logs a change of the whole index in its place: every
// replica's copy is built again from the index, which no longer holds the
// erased hash.
func (st *pgStorage) forgetHashChanges(tx *store.Tx) error {
	if _, err := tx.PG.Exec(tx.Context(), `DELETE FROM identity_lookup_changes`); err != nil {
		return err
	}
	return logLookupChange(tx, nil, nil)
}

func (st *pgStorage) deleteHash(tx *store.Tx, h [32]byte) error {
	_, err := tx.PG.Exec(tx.Context(), `DELETE FROM identity_lookup_hashes WHERE hash = $1`, h[:])
	if err != nil {
		return err
	}
	return logLookupChange(tx, h[:], nil)
}

// foldCountAt is how many count deltas a count read tolerates before it
// folds them into the single row.
const foldCountAt = 1000

// foldCount moves the deltas into the count in one statement; two replicas
// folding at once do not count a delta twice (a row the other deleted is
// skipped).
const foldCount = `WITH d AS (DELETE FROM identity_binding_count_deltas RETURNING n)
	UPDATE identity_binding_count SET n = n + (SELECT coalesce(sum(n), 0) FROM d)`

func (st *pgStorage) countBindings(db *store.DB) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n, deltas int64
	err := db.PG().Pool().QueryRow(ctx, `SELECT (SELECT n FROM identity_binding_count) + coalesce(sum(n), 0), count(*)
		FROM identity_binding_count_deltas`).Scan(&n, &deltas)
	if err != nil {
		return 0, err
	}
	if deltas >= foldCountAt {
		// Exact either way; folding keeps the next reads short. A failure
		// leaves the deltas for the next read.
		_, _ = db.PG().Pool().Exec(ctx, foldCount)
	}
	return int(n), nil
}

func (st *pgStorage) prepareImport(*store.Tx) {}

func (st *pgStorage) putHashes(tx *store.Tx, entries []hashEntry) error {
	for len(entries) > 0 {
		n := min(len(entries), 5000)
		hs, ms := make([][]byte, n), make([]string, n)
		for i, e := range entries[:n] {
			hs[i], ms[i] = e.hash[:], e.mxid
		}
		_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_lookup_hashes (hash, mxid)
			SELECT * FROM unnest($1::bytea[], $2::text[]) ON CONFLICT (hash) DO UPDATE SET mxid = excluded.mxid`, hs, ms)
		if err != nil {
			return err
		}
		entries = entries[n:]
	}
	// Too many to log one by one: replicas build their copies again.
	return logLookupChange(tx, nil, nil)
}

func (st *pgStorage) lookup(db *store.DB, pepper string, keys [][32]byte, found func(i int, mxid []byte)) (string, error) {
	return st.cache.lookup(db, pepper, keys, found, lookupSQL)
}

// lookupSQL is one statement, so one snapshot, outside any transaction: the
// pepper row and the index rows of the requested hashes (the primary key's
// btree probed once per hash). A binding committed before the lookup
// started is found, one deleted before it is not.
func lookupSQL(db *store.DB, pepper string, keys [][32]byte, found func(i int, mxid []byte)) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hs := make([][]byte, len(keys))
	at := make(map[[32]byte][]int, len(keys))
	for i := range keys {
		hs[i] = keys[i][:]
		at[keys[i]] = append(at[keys[i]], i)
	}
	rows, err := db.PG().Pool().Query(ctx, `SELECT true, NULL::bytea, pepper FROM identity_lookup_pepper
		UNION ALL SELECT false, hash, mxid FROM identity_lookup_hashes WHERE hash = ANY($1::bytea[])`, hs)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	type hit struct {
		i    int
		mxid []byte
	}
	var hits []hit
	current, havePepper := "", false
	for rows.Next() {
		var isPepper bool
		var h, v []byte
		if err := rows.Scan(&isPepper, &h, &v); err != nil {
			return "", err
		}
		if isPepper {
			current, havePepper = string(v), true
			continue
		}
		var k [32]byte
		copy(k[:], h)
		for _, i := range at[k] {
			hits = append(hits, hit{i, v})
		}
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	switch {
	case !havePepper:
		return "", errNoPepper
	case current != pepper:
		return current, errWrongPepper
	}
	sort.Slice(hits, func(a, b int) bool { return hits[a].i < hits[b].i })
	for _, h := range hits {
		found(h.i, h.mxid)
	}
	return current, nil
}

// ---- pepper ----

func (st *pgStorage) pepper(tx *store.Tx) (*pepperInfo, error) {
	var p pepperInfo
	err := tx.PG.QueryRow(tx.Context(), `SELECT pepper, created FROM identity_lookup_pepper`).Scan(&p.Value, &p.Created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	p.Created = p.Created.UTC()
	return &p, err
}

// setPepper replaces the pepper row and, with rebuild, the whole hash index
// (computed by PostgreSQL from the bindings: sha256 of the same string
// LookupHash hashes), and notifies every replica at commit.
func (st *pgStorage) setPepper(tx *store.Tx, p *pepperInfo, rebuild bool) error {
	ctx := tx.Context()
	_, err := tx.PG.Exec(ctx, `INSERT INTO identity_lookup_pepper (id, pepper, created) VALUES (true, $1, $2)
		ON CONFLICT (id) DO UPDATE SET pepper = excluded.pepper, created = excluded.created`, p.Value, p.Created)
	if err != nil {
		return err
	}
	if rebuild {
		if _, err := tx.PG.Exec(ctx, `DELETE FROM identity_lookup_hashes`); err != nil {
			return err
		}
		_, err = tx.PG.Exec(ctx, `INSERT INTO identity_lookup_hashes (hash, mxid)
			SELECT sha256(convert_to(address || ' ' || medium || ' ' || $1, 'UTF8')), mxid FROM identity_bindings
			ON CONFLICT (hash) DO NOTHING`, p.Value)
		if err != nil {
			return fmt.Errorf("rebuild lookup index: %w", err)
		}
	}
	if err := logLookupChange(tx, nil, nil); err != nil {
		return err
	}
	return pgstore.Notify(ctx, tx.PG, PepperChannel, "")
}

// ---- sessions ----

const sessionCols = `sid, secret_hash, medium, address, send_attempt, token_hashes, next_link, created, updated, validated, mail_id`

func scanSession(row pgx.Row) (*Session, error) {
	var se Session
	var validated *time.Time
	var mail int64
	err := row.Scan(&se.SID, &se.SecretHash, &se.Medium, &se.Address, &se.SendAttempt, &se.TokenHashes, &se.NextLink,
		&se.Created, &se.Updated, &validated, &mail)
	if err != nil {
		return nil, err
	}
	se.Created, se.Updated, se.Validated, se.MailID = se.Created.UTC(), se.Updated.UTC(), fromNull(validated), uint64(mail)
	return &se, nil
}

func (st *pgStorage) session(tx *store.Tx, sid string) (*Session, error) {
	se, err := scanSession(tx.PG.QueryRow(tx.Context(), `SELECT `+sessionCols+` FROM identity_sessions WHERE sid = $1`, sid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return se, err
}

func (st *pgStorage) putSession(tx *store.Tx, se *Session) error {
	hashes := se.TokenHashes
	if hashes == nil {
		hashes = [][]byte{}
	}
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_sessions (`+sessionCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (sid) DO UPDATE SET secret_hash = excluded.secret_hash, medium = excluded.medium,
			address = excluded.address, send_attempt = excluded.send_attempt, token_hashes = excluded.token_hashes,
			next_link = excluded.next_link, created = excluded.created, updated = excluded.updated,
			validated = excluded.validated, mail_id = excluded.mail_id`,
		se.SID, se.SecretHash, se.Medium, se.Address, se.SendAttempt, hashes, se.NextLink,
		se.Created, se.Updated, nullTime(se.Validated), int64(se.MailID))
	return err
}

func (st *pgStorage) sessionKey(tx *store.Tx, key []byte) (string, error) {
	var sid string
	err := tx.PG.QueryRow(tx.Context(), `SELECT sid FROM identity_session_keys WHERE key = $1`, key).Scan(&sid)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return sid, err
}

func (st *pgStorage) putSessionKey(tx *store.Tx, key []byte, sid string) error {
	_, err := tx.PG.Exec(tx.Context(), `INSERT INTO identity_session_keys (key, sid) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET sid = excluded.sid`, key, sid)
	return err
}

// deleteSessionsBefore deletes a batch of old sessions (by the updated
// index) and their keys (by the sid index) per transaction.
func (st *pgStorage) deleteSessionsBefore(db *store.DB, cutoff time.Time) (int, error) {
	deleted := 0
	for {
		var n int
		err := db.Update(func(tx *store.Tx) error {
			return tx.PG.QueryRow(tx.Context(), `WITH gone AS (
					DELETE FROM identity_sessions WHERE sid IN (
						SELECT sid FROM identity_sessions WHERE updated < $1 LIMIT $2)
					RETURNING sid),
				keys AS (DELETE FROM identity_session_keys WHERE sid IN (SELECT sid FROM gone))
				SELECT count(*) FROM gone`, cutoff, sweepBatch).Scan(&n)
		})
		if err != nil {
			return deleted, err
		}
		deleted += n
		if n < sweepBatch {
			return deleted, nil
		}
	}
}

func (st *pgStorage) eraseSessions(tx *store.Tx, address string) (int, error) {
	var n int
	err := tx.PG.QueryRow(tx.Context(), `WITH gone AS (
			DELETE FROM identity_sessions WHERE address = $1 AND medium IN ('email', '') RETURNING sid),
		keys AS (DELETE FROM identity_session_keys WHERE sid IN (SELECT sid FROM gone))
		SELECT count(*) FROM gone`, address).Scan(&n)
	return n, err
}

func (st *pgStorage) hasData(tx *store.Tx) (bool, error) {
	var any bool
	err := tx.PG.QueryRow(tx.Context(), `SELECT EXISTS (SELECT 1 FROM identity_bindings) OR EXISTS (SELECT 1 FROM identity_accounts)`).Scan(&any)
	return any, err
}

// ---- copy ----

func (st *pgStorage) scan(tx *store.Tx, kind string, after []byte, limit int, fn func(key []byte, v any) error) error {
	ctx := tx.Context()
	var rows pgx.Rows
	var err error
	switch kind {
	case kindPepper:
		if after != nil {
			return nil
		}
		p, err := st.pepper(tx)
		if err != nil || p == nil {
			return err
		}
		return fn([]byte("pepper"), p)
	case kindBindings:
		// The bbolt key is medium 0x00 address: the same order as (medium,
		// address) compared bytewise.
		// Keyset pagination on the primary key (a separate statement for the
		// first page, so that the planner never has an OR in its way).
		if after == nil {
			rows, err = tx.PG.Query(ctx, `SELECT `+bindingCols+` FROM identity_bindings ORDER BY medium, address LIMIT $1`, limit)
		} else {
			m, a, _ := strings.Cut(string(after), "\x00")
			rows, err = tx.PG.Query(ctx, `SELECT `+bindingCols+` FROM identity_bindings
				WHERE (medium, address) > ($1, $2) ORDER BY medium, address LIMIT $3`, m, a, limit)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			b, err := scanBinding(rows)
			if err != nil {
				return err
			}
			if err := fn(bindingKey(b.Medium, b.Address), *b); err != nil {
				return err
			}
		}
		return rows.Err()
	case kindHashes, kindSessionKeys:
		q := `SELECT hash, mxid FROM identity_lookup_hashes WHERE hash > $1 ORDER BY hash LIMIT $2`
		if kind == kindSessionKeys {
			q = `SELECT key, sid FROM identity_session_keys WHERE key > $1 ORDER BY key LIMIT $2`
		}
		rows, err = tx.PG.Query(ctx, q, nonNil(after), limit)
		if err != nil {
			return err
		}
		var k []byte
		var v string
		_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error { return fn(k, v) })
		return err
	case kindAccounts:
		rows, err = tx.PG.Query(ctx, `SELECT token_hash, user_id, created, last_used, expired FROM identity_accounts
			WHERE token_hash > $1 ORDER BY token_hash LIMIT $2`, nonNil(after), limit)
		if err != nil {
			return err
		}
		var k []byte
		var a Account
		var last, expired *time.Time
		_, err = pgx.ForEachRow(rows, []any{&k, &a.UserID, &a.Created, &last, &expired}, func() error {
			return fn(k, Account{UserID: a.UserID, Created: a.Created.UTC(), LastUsed: fromNull(last), Expired: fromNull(expired)})
		})
		return err
	case kindTerms:
		// limit users, each with all of its rows.
		rows, err = tx.PG.Query(ctx, `SELECT user_id, policy, version FROM identity_terms WHERE user_id IN (
				SELECT DISTINCT user_id FROM identity_terms WHERE user_id > $1 ORDER BY user_id LIMIT $2)
			ORDER BY user_id`, string(after), limit)
		if err != nil {
			return err
		}
		var user, p, v, cur string
		var m map[string]bool
		_, err = pgx.ForEachRow(rows, []any{&user, &p, &v}, func() error {
			if m != nil && user != cur {
				if err := fn([]byte(cur), m); err != nil {
					return err
				}
				m = nil
			}
			if m == nil {
				m, cur = map[string]bool{}, user
			}
			m[p+"\x00"+v] = true
			return nil
		})
		if err != nil || m == nil {
			return err
		}
		return fn([]byte(cur), m)
	case kindSessions:
		rows, err = tx.PG.Query(ctx, `SELECT `+sessionCols+` FROM identity_sessions
			WHERE sid > $1 ORDER BY sid LIMIT $2`, string(after), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			se, err := scanSession(rows)
			if err != nil {
				return err
			}
			if err := fn([]byte(se.SID), *se); err != nil {
				return err
			}
		}
		return rows.Err()
	}
	return fmt.Errorf("identity: unknown record kind %q", kind)
}

// nonNil is after as a key every stored key sorts above when it is nil
// (the empty bytea; with COLLATE "C", the empty string likewise).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
