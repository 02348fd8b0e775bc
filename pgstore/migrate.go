package pgstore

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var embeddedFiles embed.FS

var embedded, _ = fs.Sub(embeddedFiles, "migrations")

// ErrSchemaNewer means the database was migrated by a newer Herald: this
// binary does not know its tables and must not write to them.
var ErrSchemaNewer = errors.New("pgstore: the database schema is newer than this Herald")

// migrateLockKey is the advisory lock the migrator holds: one replica
// migrates, the others wait and then find nothing left to do.
const migrateLockKey int64 = 0x6865_7261_6c64_0001 // "herald" 1

// migration is one numbered SQL file, NNNN_name.sql.
type migration struct {
	version  int
	name     string
	sql      string
	checksum string
}

// loadMigrations reads and orders the migrations of fsys. Versions start at
// 1 and have no gaps, so a missing file is caught at build time by the test
// that opens a database, not by an operator.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("pgstore: migration %s: the name must be NNNN_what.sql", name)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(path.Base(name), ".sql"),
			sql: string(b), checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("pgstore: migration %s: want version %d (versions start at 1, no gaps or repeats)", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate applies the pending migrations, each in its own transaction with
// its schema_migrations row, while holding a session advisory lock on one
// connection. The lock goes with the connection if this process dies, so a
// replica killed mid-migration blocks nobody: its transaction rolls back and
// the next replica applies the migration.
func migrate(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) (err error) {
	ms, err := loadMigrations(fsys)
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLockKey); err != nil {
		return fmt.Errorf("pgstore: migrate: waiting for the migration lock: %w", err)
	}
	defer func() {
		// A connection whose unlock failed may still hold the lock: close
		// it rather than return it to the pool.
		uctx, cancel := detached(ctx)
		defer cancel()
		if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", migrateLockKey); uerr != nil {
			_ = conn.Conn().Close(uctx)
		}
	}()

	applied, err := appliedMigrations(ctx, conn.Conn())
	if err != nil {
		return err
	}
	if v := maxKey(applied); v > len(ms) {
		return fmt.Errorf("%w: the database is at version %d, this binary knows up to %d: run a Herald at least as new as the one that migrated it",
			ErrSchemaNewer, v, len(ms))
	}
	for v, sum := range applied {
		if want := ms[v-1].checksum; sum != want {
			return fmt.Errorf("pgstore: migration %s was changed after it was applied (checksum %.12s in the database, %.12s in this binary)",
				ms[v-1].name, sum, want)
		}
	}
	for _, m := range ms {
		if _, ok := applied[m.version]; ok {
			continue
		}
		err := pgx.BeginFunc(ctx, conn.Conn(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
				m.version, m.name, m.checksum)
			return err
		})
		if err != nil {
			return fmt.Errorf("pgstore: migration %s: %w", m.name, err)
		}
	}
	return nil
}

// appliedMigrations reads schema_migrations; a database without the table
// has none.
func appliedMigrations(ctx context.Context, conn *pgx.Conn) (map[int]string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("pgstore: migrate: %w", err)
	}
	applied := map[int]string{}
	if !exists {
		return applied, nil
	}
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("pgstore: migrate: %w", err)
	}
	var v int
	var sum string
	_, err = pgx.ForEachRow(rows, []any{&v, &sum}, func() error { applied[v] = sum; return nil })
	if err != nil {
		return nil, fmt.Errorf("pgstore: migrate: %w", err)
	}
	return applied, nil
}

func maxKey(m map[int]string) int {
	n := 0
	for k := range m {
		n = max(n, k)
	}
	return n
}

// SchemaVersion is the newest migration applied to the database.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := db.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v)
	return v, err
}
