package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/internal/background"
)

// OwnerLockClass is the first key of the advisory locks that say a replica
// is alive: each open DB holds pg_advisory_lock(OwnerLockClass, Owner()) on
// a connection of its own for as long as it is open. PostgreSQL releases
// the lock when that connection ends, which it does at once when the
// replica's process dies (kill -9 included), so other replicas can tell
// that the claims a replica made (pgqueue's lease_owner) belong to nobody
// any more, without waiting for their leases to run out. In pg_locks the
// lock is locktype 'advisory', classid OwnerLockClass, objid the owner,
// objsubid 2.
const OwnerLockClass = 0x48524c44 // "HRLD"

// LiveOwnersQuery lists the owners whose replica is alive (holds its owner
// lock on this database), as one bigint column, for a NOT IN clause.
var LiveOwnersQuery = fmt.Sprintf(`SELECT objid::bigint FROM pg_locks
	WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = %d
	  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, OwnerLockClass)

// ownerCheck is how often the owner connection is checked (and, if it
// broke, taken again).
const ownerCheck = 5 * time.Second

// Owner is this replica's owner number (1 to 2^31-1): what it writes where
// it claims something for a while (a queue record's lease_owner), so that
// others may take the claim at once when the replica is gone.
func (db *DB) Owner() int64 { return int64(db.owner) }

// takeOwner picks a free owner number and locks it on a connection of its
// own, then keeps the connection (and lock) up until Close.
func (db *DB) takeOwner(ctx context.Context) error {
	for range 16 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		id := int32(binary.BigEndian.Uint32(b[:]) & 0x7fffffff)
		if id == 0 {
			continue
		}
		conn, ok, err := db.lockOwner(ctx, id)
		if err != nil {
			return fmt.Errorf("pgstore: owner lock: %w", err)
		}
		if !ok {
			continue // another live replica drew the same number
		}
		db.owner = id
		kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		db.stopOwner = cancel
		db.ownerDone = make(chan struct{})
		go db.keepOwner(kctx, conn)
		return nil
	}
	return errors.New("pgstore: owner lock: no free owner number")
}

// lockOwner connects outside the pool and tries the owner lock of id.
func (db *DB) lockOwner(ctx context.Context, id int32) (*pgx.Conn, bool, error) {
	cfg := db.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = ownerAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, false, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", int32(OwnerLockClass), id).Scan(&ok); err != nil || !ok {
		cctx, cancel := detached(ctx)
		_ = conn.Close(cctx)
		cancel()
		return nil, false, err
	}
	return conn, true, nil
}

// ownerAppName is the application_name of the owner connection, so an
// operator reading pg_stat_activity tells it from the pool's.
const ownerAppName = "herald owner"

// keepOwner checks the owner connection every ownerCheck and, when it
// broke, connects again and takes the same lock back. While it is broken
// other replicas may take this replica's claims (as if it had died): an
// attempt in flight then may be made twice, the crash window of a queue.
func (db *DB) keepOwner(ctx context.Context, conn *pgx.Conn) {
	defer close(db.ownerDone)
	defer func() {
		if conn != nil {
			cctx, cancel := detached(ctx)
			_ = conn.Close(cctx)
			cancel()
		}
	}()
	for background.Sleep(ctx, ownerCheck) {
		if conn != nil {
			pctx, cancel := context.WithTimeout(ctx, ownerCheck)
			err := conn.Ping(pctx)
			cancel()
			if err == nil || ctx.Err() != nil {
				continue
			}
			db.log.Warn("owner lock: connection lost; taking it again", "err", err)
			cctx, ccancel := detached(ctx)
			_ = conn.Close(cctx)
			ccancel()
			conn = nil
		}
		c, ok, err := db.lockOwner(ctx, db.owner)
		switch {
		case err != nil:
			db.log.Warn("owner lock: reconnecting", "err", err)
		case !ok:
			db.log.Error("owner lock: another connection holds this replica's owner lock", "owner", db.owner)
		default:
			conn = c
			db.log.Info("owner lock taken again", "owner", db.owner)
		}
	}
}
