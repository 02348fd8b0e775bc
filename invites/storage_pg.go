package invites

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/herald-im/herald/store"
)

// pgStorage keeps the invites in the PostgreSQL tables of
// pgstore/migrations/0005_invites.sql: the record's JSON with the columns
// its indexes need, the de-duplication, counter, opt-out and vouch tables,
// and the onbind deliveries' own indexes.
type pgStorage struct{}

// pg is tx's PostgreSQL transaction and the context its statements run under.
func pg(tx *store.Tx) (pgx.Tx, context.Context) { return tx.PG, tx.Context() }

// The tables exist from the migration: nothing to prepare.
func (pgStorage) open(*store.DB, string) error { return nil }

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullTimestamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// limitArg is a LIMIT argument: NULL (no limit) for limit <= 0.
func limitArg(limit int) *int64 {
	if limit <= 0 {
		return nil
	}
	n := int64(limit)
	return &n
}

// beforeArg is an id bound: below before, or below every id for 0.
func beforeArg(before uint64) int64 {
	if before == 0 || before > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(before)
}

func pgErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("invites: %s: %w", what, err)
}

// The reads of the hot paths, sweeps and console lists, each answered from
// an index of 0005_invites.sql (TestPGQueriesUseIndexes EXPLAINs them).
const (
	qGet        = `SELECT data FROM invites WHERE id = $1`
	qGetMany    = `SELECT id, data FROM invites WHERE id = ANY($1)`
	qByToken    = `SELECT id FROM invites WHERE token = $1`
	qForAddress = `SELECT id FROM invites WHERE medium = $1 AND address = $2 ORDER BY id`
	qDedup      = `SELECT invite_id FROM invite_dedup
		WHERE sender = $1 AND room_id = $2 AND medium = $3 AND address = $4`
	qClaimDedup = `INSERT INTO invite_dedup (sender, room_id, medium, address, invite_id)
		SELECT $1, $2, $3, $4, nextval('invites_id_seq') FROM (SELECT pg_advisory_xact_lock_shared(` + addressLockKey + `)) l
		ON CONFLICT DO NOTHING RETURNING invite_id`
	qDedupForUpdate = `SELECT invite_id FROM invite_dedup
		WHERE sender = $1 AND room_id = $2 AND medium = $3 AND address = $4 FOR UPDATE`
	qInState  = `SELECT id FROM invites WHERE state = $1 ORDER BY id`
	qCounters = `SELECT key, sum(n)::bigint FROM (
		SELECT key, n FROM invite_counts WHERE key = ANY($1)
		UNION ALL SELECT key, n FROM invite_count_deltas WHERE key = ANY($1)) c GROUP BY key`
	qExpiryDue = `SELECT id FROM invites WHERE state = 'pending' AND expires_at IS NOT NULL
		AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2`
	qEraseDue = `SELECT id, state_changed FROM invites WHERE holds_secret AND state_changed < $1
		AND (state_changed, id) > ($2, $3) ORDER BY state_changed, id LIMIT $4`
	qPending = `SELECT id, mail_id, expires_at FROM invites WHERE state = 'pending' AND id < $1
		ORDER BY id DESC LIMIT $2`
	qOptedOut      = `SELECT EXISTS (SELECT 1 FROM invite_optouts WHERE address = $1 AND (sender = '*' OR sender = $2))`
	qAnyOptOut     = `SELECT EXISTS (SELECT 1 FROM invite_optouts WHERE address = $1)`
	qVouch         = `SELECT data FROM invite_vouches WHERE invite_id = $1`
	qFirstVouchDue = `SELECT due, invite_id FROM invite_vouch_due ORDER BY due, invite_id LIMIT 1`
	qDeliveriesOf  = `SELECT delivery_id FROM onbind_invite WHERE invite_id = $1 ORDER BY delivery_id`
	qDeliveriesTo  = `SELECT delivery_id FROM onbind_address WHERE medium = $1 AND address = $2
		ORDER BY delivery_id`
	qRecords    = `SELECT data FROM invites WHERE id > $1 ORDER BY id LIMIT $2`
	qDescendAll = `SELECT id FROM invites WHERE id < $1 ORDER BY id DESC LIMIT $2`
)

// descendQuery is descend's query for a source of one value.
func descendQuery(where string) string {
	return `SELECT id FROM invites WHERE ` + where + ` AND id < $2 ORDER BY id DESC LIMIT $3`
}

func (pgStorage) get(tx *store.Tx, id uint64) (*Invite, error) {
	t, ctx := pg(tx)
	var raw []byte
	err := t.QueryRow(ctx, qGet, int64(id)).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, pgErr("read invite", err)
	}
	inv := new(Invite)
	if err := json.Unmarshal(raw, inv); err != nil {
		return nil, err
	}
	return inv, nil
}

func (pgStorage) getMany(tx *store.Tx, ids []uint64) ([]*Invite, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	t, ctx := pg(tx)
	arg := make([]int64, len(ids))
	for i, id := range ids {
		arg[i] = int64(id)
	}
	rows, err := t.Query(ctx, qGetMany, arg)
	if err != nil {
		return nil, pgErr("read invites", err)
	}
	byID := make(map[uint64]*Invite, len(ids))
	var id int64
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&id, &raw}, func() error {
		inv := new(Invite)
		if err := json.Unmarshal(raw, inv); err != nil {
			return err
		}
		byID[uint64(id)] = inv
		return nil
	})
	if err != nil {
		return nil, pgErr("read invites", err)
	}
	out := make([]*Invite, 0, len(byID))
	for _, id := range ids {
		if inv := byID[id]; inv != nil {
			out = append(out, inv)
		}
	}
	return out, nil
}

const putInvite = `INSERT INTO invites (id, token, medium, address, state, sender, room_id, room_alias, homeserver,
	created, state_changed, expires_at, mail_id, holds_secret, data)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
	ON CONFLICT (id) DO UPDATE SET token = excluded.token, medium = excluded.medium, address = excluded.address,
	state = excluded.state, sender = excluded.sender, room_id = excluded.room_id, room_alias = excluded.room_alias,
	homeserver = excluded.homeserver, created = excluded.created, state_changed = excluded.state_changed,
	expires_at = excluded.expires_at, mail_id = excluded.mail_id, holds_secret = excluded.holds_secret, data = excluded.data`

// putArgs are putInvite's arguments for inv.
func putArgs(inv *Invite) ([]any, error) {
	raw, err := json.Marshal(inv)
	if err != nil {
		return nil, err
	}
	return []any{int64(inv.ID), nullString(inv.Token), inv.Medium, inv.Address, inv.State, inv.Sender, inv.RoomID,
		inv.RoomAlias, inv.Homeserver, inv.Created, inv.StateChanged, nullTimestamp(inv.ExpiresAt), int64(inv.MailID),
		holdsSecret(inv), raw}, nil
}

func (pgStorage) put(tx *store.Tx, inv *Invite) error {
	args, err := putArgs(inv)
	if err != nil {
		return err
	}
	return pgErr("write invite", tx.Exec(putInvite, args...))
}

func (pgStorage) remove(tx *store.Tx, id uint64) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `DELETE FROM invites WHERE id = $1`, int64(id))
	return pgErr("delete invite", err)
}

func (pgStorage) nextID(tx *store.Tx) (uint64, error) {
	t, ctx := pg(tx)
	var id int64
	err := t.QueryRow(ctx, `SELECT nextval('invites_id_seq')`).Scan(&id)
	return uint64(id), pgErr("invite id", err)
}

// dedupHeld reports whether inv holds a de-duplication entry.
func dedupHeld(inv *Invite) bool {
	return inv != nil && inv.State == StatePending && inv.Token != ""
}

// index keeps what the columns of the invites row do not: the
// de-duplication entry and the counters (as delta rows: see the migration).
// Its writes are queued (store.Tx.Exec): they go with the transaction's
// next statement or its commit.
func (pgStorage) index(tx *store.Tx, old, inv *Invite, claimed bool) error {
	same := old != nil && inv != nil && dedupHeld(old) && dedupHeld(inv) && old.ID == inv.ID &&
		old.Sender == inv.Sender && old.RoomID == inv.RoomID && old.Medium == inv.Medium && old.Address == inv.Address
	if old != nil && !same {
		if err := tx.Exec(`DELETE FROM invite_dedup WHERE sender = $1 AND room_id = $2 AND medium = $3 AND address = $4
			AND invite_id = $5`, old.Sender, old.RoomID, old.Medium, old.Address, int64(old.ID)); err != nil {
			return pgErr("de-duplication entry", err)
		}
	}
	// A new invite whose entry claimDedup inserted in this transaction,
	// naming its id, already has it: writing it again would only make a
	// second version of the row.
	if dedupHeld(inv) && !same && !(old == nil && claimed) {
		if err := tx.Exec(`INSERT INTO invite_dedup (sender, room_id, medium, address, invite_id) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (sender, room_id, medium, address) DO UPDATE SET invite_id = excluded.invite_id`,
			inv.Sender, inv.RoomID, inv.Medium, inv.Address, int64(inv.ID)); err != nil {
			return pgErr("de-duplication entry", err)
		}
	}
	changes := counterChanges(old, inv)
	if len(changes) == 0 {
		return nil
	}
	keys := make([]string, 0, len(changes))
	ns := make([]int32, 0, len(changes))
	for k, n := range changes {
		keys = append(keys, k.name())
		ns = append(ns, int32(n))
	}
	return pgErr("counters", tx.Exec(`INSERT INTO invite_count_deltas (key, n) SELECT * FROM unnest($1::text[], $2::integer[])`, keys, ns))
}

// ids runs a query of one bigint column.
func ids(tx *store.Tx, what, q string, args ...any) ([]uint64, error) {
	t, ctx := pg(tx)
	rows, err := t.Query(ctx, q, args...)
	if err != nil {
		return nil, pgErr(what, err)
	}
	var out []uint64
	var id int64
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error { out = append(out, uint64(id)); return nil })
	return out, pgErr(what, err)
}

// one runs a query of at most one bigint (0: no row).
func one(tx *store.Tx, what, q string, args ...any) (uint64, error) {
	t, ctx := pg(tx)
	var id int64
	err := t.QueryRow(ctx, q, args...).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return uint64(id), pgErr(what, err)
}

func (pgStorage) byToken(tx *store.Tx, token string) (uint64, error) {
	return one(tx, "invite by token", qByToken, token)
}

func (pgStorage) forAddress(tx *store.Tx, medium, address string) ([]uint64, error) {
	return ids(tx, "invites of an address", qForAddress, medium, address)
}

func (pgStorage) dedup(tx *store.Tx, sender, room, medium, address string) (uint64, error) {
	return one(tx, "de-duplication entry", qDedup, sender, room, medium, address)
}

// queueDedup is dedup queued on tx (store.Tx.QueueRow): *out is set when
// the transaction's next round trip has been sent.
func (pgStorage) queueDedup(tx *store.Tx, sender, room, medium, address string, out *uint64) error {
	return tx.QueueRow(func(row pgx.Row) error {
		var id int64
		err := row.Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			id, err = 0, nil
		}
		*out = uint64(id)
		return pgErr("de-duplication entry", err)
	}, qDedup, sender, room, medium, address)
}

// queueOptedOut is optedOut queued on tx (store.Tx.QueueRow).
func (pgStorage) queueOptedOut(tx *store.Tx, address, sender string, out *bool) error {
	return tx.QueueRow(func(row pgx.Row) error {
		return pgErr("opt-outs", row.Scan(out))
	}, qOptedOut, address, sender)
}

// addressLockKey is the advisory lock key of the address in $4 (medium in
// $3): store-invite holds it shared from its first statement to its
// commit, a bind exclusively from its hook to its commit (see
// Deliveries.resolve), so that an invite is never stored for an address
// while it is being bound.
const addressLockKey = `hashtextextended('herald.invites.address:' || $3 || ':' || $4, 0)`

// lockAddressPG is the bind's side of addressLockKey: it takes the
// address's advisory lock exclusively in tx (waiting for the store-invites
// that hold it shared to commit or roll back; a store-invite that comes
// later waits for the bind and then reads its binding). A bind transaction
// that is not READ COMMITTED reads the invites under a snapshot taken
// before the lock, which can miss an invite committed meanwhile: a fresh
// read outside tx (a pool connection, READ COMMITTED) finds any pending
// invite of the address that tx does not see, and then the bind fails with
// a serialization failure, which store.DB runs again with a new snapshot.
// secondConnWait bounds how long a bind waits for lockAddressPG's second
// pool connection before it runs again.
const secondConnWait = time.Second

func lockAddressPG(db *store.DB, tx *store.Tx, medium, address string) error {
	t, ctx := pg(tx)
	if _, err := t.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('herald.invites.address:' || $1 || ':' || $2, 0))`,
		medium, address); err != nil {
		return pgErr("address lock", err)
	}
	seen, err := ids(tx, "invites of an address", qForAddress, medium, address)
	if err != nil {
		return err
	}
	known := make([]int64, len(seen))
	for i, id := range seen {
		known[i] = int64(id)
	}
	// The fresh read needs a second pool connection while tx holds one. If
	// binds held every connection of the pool, each waiting for a second,
	// none would get it: so the wait is short, and a bind that does not get
	// one fails as a serialization failure, which store.DB runs again after
	// a backoff, with tx's connection given back meanwhile.
	actx, cancel := context.WithTimeout(ctx, secondConnWait)
	defer cancel()
	conn, err := db.PG().Pool().Acquire(actx)
	if err != nil {
		if ctx.Err() == nil {
			return &pgconn.PgError{Code: "40001", Message: "invites: no second pool connection for the bind's fresh read: run again"}
		}
		return pgErr("invites of an address", err)
	}
	defer conn.Release()
	var unseen bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM invites WHERE medium = $1 AND address = $2
		AND state = 'pending' AND NOT (id = ANY($3)))`, medium, address, known).Scan(&unseen); err != nil {
		return pgErr("invites of an address", err)
	}
	if unseen {
		return &pgconn.PgError{Code: "40001", Message: "invites: an invite for the address being bound was stored after the bind's snapshot"}
	}
	return nil
}

// claimDedup takes the address's shared lock and inserts the tuple's entry
// with a new invite id (one statement), which the transaction's invite then
// has (or the transaction rolls back). At READ COMMITTED a concurrent
// store-invite of the same tuple waits on the entry's key and then finds
// it, committed, with its invite; one of another tuple never waits. When an
// entry exists it is read FOR UPDATE: a store-invite replacing a stale
// entry (its invite no longer pending) holds the row until it commits, and
// one waiting on it reads the replacement.
func (pgStorage) claimDedup(tx *store.Tx, sender, room, medium, address string) (uint64, uint64, error) {
	t, ctx := pg(tx)
	var id int64
	err := t.QueryRow(ctx, qClaimDedup, sender, room, medium, address).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		existing, err := one(tx, "de-duplication entry", qDedupForUpdate, sender, room, medium, address)
		return existing, 0, err
	}
	if err != nil {
		return 0, 0, pgErr("de-duplication entry", err)
	}
	return 0, uint64(id), nil
}

func (pgStorage) inState(tx *store.Tx, state string) ([]uint64, error) {
	return ids(tx, "invites in a state", qInState, state)
}

func (pgStorage) hasData(tx *store.Tx) (bool, error) {
	t, ctx := pg(tx)
	var has bool
	err := t.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM invites)`).Scan(&has)
	return has, pgErr("any invite", err)
}

func (pgStorage) counters(tx *store.Tx, keys []counterKey) (map[counterKey]int, error) {
	out := make(map[counterKey]int, len(keys))
	byName := make(map[string]counterKey, len(keys))
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		out[k] = 0
		byName[k.name()] = k
		names = append(names, k.name())
	}
	t, ctx := pg(tx)
	rows, err := t.Query(ctx, qCounters, names)
	if err != nil {
		return out, pgErr("counters", err)
	}
	var name string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		out[byName[name]] = int(max(n, 0))
		return nil
	})
	return out, pgErr("counters", err)
}

func (pgStorage) expiryDue(tx *store.Tx, now time.Time, limit int) ([]uint64, error) {
	return ids(tx, "expiry index", qExpiryDue, now, limitArg(limit))
}

func (pgStorage) eraseDue(tx *store.Tx, from eraseCursor, cutoff time.Time, limit int) ([]uint64, eraseCursor, error) {
	t, ctx := pg(tx)
	at := from.at
	if from.id == 0 {
		at = time.Time{}
	}
	rows, err := t.Query(ctx, qEraseDue, cutoff, at, int64(from.id), limitArg(limit))
	if err != nil {
		return nil, from, pgErr("erase index", err)
	}
	var out []uint64
	next := from
	var id int64
	var changed time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &changed}, func() error {
		out = append(out, uint64(id))
		next = eraseCursor{at: changed, id: uint64(id)}
		return nil
	})
	return out, next, pgErr("erase index", err)
}

// sourceWhere is the condition selecting src's invites on $1 (none for
// every invite), written so the planner uses the column's index.
func sourceWhere(src source) string {
	switch src.kind {
	case "":
		return ""
	case byState:
		return "state = $1"
	case bySender:
		return "sender = $1"
	case byRoom:
		return "room_id = $1"
	case byAlias:
		return "room_alias = $1 AND room_alias <> ''"
	case byHomeserver:
		return "homeserver = $1"
	}
	return "false"
}

func (pgStorage) descend(tx *store.Tx, src source, before uint64, limit int) ([]uint64, error) {
	where := sourceWhere(src)
	if where == "" {
		return ids(tx, "invites", qDescendAll, beforeArg(before), limitArg(limit))
	}
	return ids(tx, "invites", descendQuery(where), src.value, beforeArg(before), limitArg(limit))
}

func (pgStorage) countSource(tx *store.Tx, src source) (int, error) {
	where := sourceWhere(src)
	q := `SELECT count(*) FROM invites`
	var args []any
	if where != "" {
		q += ` WHERE ` + where
		args = append(args, src.value)
	}
	n, err := one(tx, "count invites", q, args...)
	return int(n), err
}

func (pgStorage) pending(tx *store.Tx, before uint64, limit int) ([]pendingEntry, error) {
	t, ctx := pg(tx)
	rows, err := t.Query(ctx, qPending, beforeArg(before), limitArg(limit))
	if err != nil {
		return nil, pgErr("pending invites", err)
	}
	var out []pendingEntry
	var id, mail int64
	var exp *time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &mail, &exp}, func() error {
		e := pendingEntry{id: uint64(id), mailID: uint64(mail)}
		if exp != nil {
			e.expiresAt = *exp
		}
		out = append(out, e)
		return nil
	})
	return out, pgErr("pending invites", err)
}

func (pgStorage) optedOut(tx *store.Tx, address, sender string) (bool, error) {
	t, ctx := pg(tx)
	var out bool
	err := t.QueryRow(ctx, qOptedOut,
		address, sender).Scan(&out)
	return out, pgErr("opt-outs", err)
}

func (pgStorage) anyOptOut(tx *store.Tx, address string) (bool, error) {
	t, ctx := pg(tx)
	var out bool
	err := t.QueryRow(ctx, qAnyOptOut, address).Scan(&out)
	return out, pgErr("opt-outs", err)
}

func (pgStorage) putOptOut(tx *store.Tx, o OptOut) error {
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	t, ctx := pg(tx)
	_, err = t.Exec(ctx, `INSERT INTO invite_optouts (address, sender, data) VALUES ($1, $2, $3)
		ON CONFLICT (address, sender) DO UPDATE SET data = excluded.data`, o.Address, o.Sender, raw)
	return pgErr("opt-out", err)
}

func (pgStorage) deleteOptOut(tx *store.Tx, address, sender string) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `DELETE FROM invite_optouts WHERE address = $1 AND sender = $2`, address, sender)
	return pgErr("opt-out", err)
}

func (pgStorage) putVouch(tx *store.Tx, id uint64, raw []byte) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `INSERT INTO invite_vouches (invite_id, data) VALUES ($1, $2)
		ON CONFLICT (invite_id) DO UPDATE SET data = excluded.data`, int64(id), raw)
	return pgErr("vouch", err)
}

func (pgStorage) getVouch(tx *store.Tx, id uint64) ([]byte, error) {
	t, ctx := pg(tx)
	var raw []byte
	err := t.QueryRow(ctx, qVouch, int64(id)).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return raw, pgErr("vouch", err)
}

func (pgStorage) deleteVouch(tx *store.Tx, id uint64) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `DELETE FROM invite_vouches WHERE invite_id = $1`, int64(id))
	return pgErr("vouch", err)
}

func (pgStorage) addVouchDue(tx *store.Tx, due time.Time, id uint64) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `INSERT INTO invite_vouch_due (due, invite_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, due, int64(id))
	return pgErr("vouch resolve time", err)
}

func (pgStorage) firstVouchDue(tx *store.Tx) (time.Time, uint64, bool, error) {
	t, ctx := pg(tx)
	var due time.Time
	var id int64
	err := t.QueryRow(ctx, qFirstVouchDue).Scan(&due, &id)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, 0, false, nil
	}
	if err != nil {
		return time.Time{}, 0, false, pgErr("vouch resolve time", err)
	}
	return due, uint64(id), true, nil
}

func (pgStorage) deleteVouchDue(tx *store.Tx, due time.Time, id uint64) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `DELETE FROM invite_vouch_due WHERE due = $1 AND invite_id = $2`, due, int64(id))
	return pgErr("vouch resolve time", err)
}

func (pgStorage) indexDelivery(tx *store.Tx, dl Delivery) error {
	t, ctx := pg(tx)
	invs := make([]int64, 0, len(dl.InviteIDs))
	for _, id := range dl.InviteIDs {
		invs = append(invs, int64(id))
	}
	if _, err := t.Exec(ctx, `INSERT INTO onbind_invite (invite_id, delivery_id) SELECT unnest($1::bigint[]), $2
		ON CONFLICT DO NOTHING`, invs, int64(dl.ID)); err != nil {
		return pgErr("delivery index", err)
	}
	_, err := t.Exec(ctx, `INSERT INTO onbind_address (medium, address, delivery_id) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, dl.Medium, dl.Address, int64(dl.ID))
	return pgErr("delivery index", err)
}

func (pgStorage) unindexDelivery(tx *store.Tx, dl Delivery) error {
	t, ctx := pg(tx)
	invs := make([]int64, 0, len(dl.InviteIDs))
	for _, id := range dl.InviteIDs {
		invs = append(invs, int64(id))
	}
	if _, err := t.Exec(ctx, `DELETE FROM onbind_invite WHERE invite_id = ANY($1) AND delivery_id = $2`, invs, int64(dl.ID)); err != nil {
		return pgErr("delivery index", err)
	}
	_, err := t.Exec(ctx, `DELETE FROM onbind_address WHERE medium = $1 AND address = $2 AND delivery_id = $3`,
		dl.Medium, dl.Address, int64(dl.ID))
	return pgErr("delivery index", err)
}

func (pgStorage) deliveriesOf(tx *store.Tx, inviteID uint64) ([]uint64, error) {
	return ids(tx, "deliveries of an invite", qDeliveriesOf,
		int64(inviteID))
}

func (pgStorage) deliveriesTo(tx *store.Tx, medium, address string) ([]uint64, error) {
	return ids(tx, "deliveries to an address", qDeliveriesTo, medium, address)
}

func (pgStorage) records(tx *store.Tx, after uint64, limit int) ([]*Invite, error) {
	t, ctx := pg(tx)
	rows, err := t.Query(ctx, qRecords, int64(after), limitArg(limit))
	if err != nil {
		return nil, pgErr("invites", err)
	}
	var out []*Invite
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&raw}, func() error {
		inv := new(Invite)
		if err := json.Unmarshal(raw, inv); err != nil {
			return err
		}
		out = append(out, inv)
		return nil
	})
	return out, pgErr("invites", err)
}

func (pgStorage) setNextID(tx *store.Tx, last uint64) error {
	t, ctx := pg(tx)
	_, err := t.Exec(ctx, `SELECT setval('invites_id_seq', greatest($1, (SELECT last_value FROM invites_id_seq)))`, int64(last))
	return pgErr("invite id sequence", err)
}

func (pgStorage) dump(tx *store.Tx) (*storageDump, error) {
	t, ctx := pg(tx)
	d := &storageDump{counters: map[string]int{}}
	query := func(q string, dest []any, fn func() error) error {
		rows, err := t.Query(ctx, q)
		if err != nil {
			return err
		}
		_, err = pgx.ForEachRow(rows, dest, fn)
		return err
	}
	var raw []byte
	var a, b, c, e string
	var id, id2 int64
	var at time.Time
	err := errors.Join(
		query(`SELECT data FROM invite_optouts`, []any{&raw}, func() error {
			var o OptOut
			if err := json.Unmarshal(raw, &o); err != nil {
				return err
			}
			d.optOuts = append(d.optOuts, o)
			return nil
		}),
		query(`SELECT invite_id, data FROM invite_vouches`, []any{&id, &raw}, func() error {
			d.vouches = append(d.vouches, vouchRow{id: uint64(id), raw: append([]byte(nil), raw...)})
			return nil
		}),
		query(`SELECT due, invite_id FROM invite_vouch_due`, []any{&at, &id}, func() error {
			d.dues = append(d.dues, vouchDue{due: at, id: uint64(id)})
			return nil
		}),
		query(`SELECT sender, room_id, medium, address, invite_id FROM invite_dedup`, []any{&a, &b, &c, &e, &id}, func() error {
			d.dedup = append(d.dedup, dedupRow{sender: a, room: b, medium: c, address: e, id: uint64(id)})
			return nil
		}),
		query(`SELECT key, sum(n)::bigint FROM (SELECT key, n FROM invite_counts UNION ALL SELECT key, n FROM invite_count_deltas) c
			GROUP BY key`, []any{&a, &id}, func() error {
			if id > 0 {
				d.counters[a] = int(id)
			}
			return nil
		}),
		query(`SELECT invite_id, delivery_id FROM onbind_invite`, []any{&id, &id2}, func() error {
			d.byInvite = append(d.byInvite, [2]uint64{uint64(id), uint64(id2)})
			return nil
		}),
		query(`SELECT medium, address, delivery_id FROM onbind_address`, []any{&a, &b, &id}, func() error {
			d.byAddress = append(d.byAddress, addressRow{medium: a, address: b, delivery: uint64(id)})
			return nil
		}),
	)
	return d, pgErr("dump", err)
}

// foldCounts moves the counter deltas into the counters in one statement.
// Two replicas folding at once do not count a delta twice (a row the other
// deleted is skipped) and update the counters in key order, so they never
// deadlock.
const foldCounts = `WITH d AS (DELETE FROM invite_count_deltas RETURNING key, n)
	INSERT INTO invite_counts (key, n) SELECT key, sum(n) FROM d GROUP BY key ORDER BY key
	ON CONFLICT (key) DO UPDATE SET n = invite_counts.n + excluded.n`

// FoldCounts moves the invite counters' delta rows into the counters (one
// statement), so reading a count adds up a bounded number of rows. On
// PostgreSQL the wiring runs it once per period across replicas
// (pgstore.RunPeriodic; RunLifecycle does too); counts are exact whether or
// not it ran. On bbolt, whose counters are updated in place, it does nothing.
func (s *Service) FoldCounts(ctx context.Context) error {
	if s.db.Backend() != store.BackendPostgres {
		return nil
	}
	_, err := s.db.PG().Pool().Exec(ctx, foldCounts)
	return pgErr("fold counters", err)
}
