package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/term"

	"github.com/herald-im/herald/admin"
	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/identity"
	"github.com/herald-im/herald/internal/server"
	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
	"github.com/herald-im/herald/sydent"
)

const migrateUsage = `usage: herald migrate-storage --to postgres [--dsn DSN] [--restart]

  Copy the bbolt database of data_dir into an empty PostgreSQL database
  (storage.backend: postgres), then verify the copy: the count and a
  checksum of every kind of record on both sides, printed; exit 1 on any
  difference. Herald must be stopped (the command takes data_dir's lock).

  --dsn DSN   the target (default storage.postgres.dsn, or
              HERALD_STORAGE_POSTGRES_DSN, which keeps it out of the process
              list); it is never printed
  --restart   empty a target that an interrupted run left half-copied, and
              copy again (refused on any other non-empty database)

  The command refuses a target that holds data. Interrupted (Ctrl-C, a lost
  connection), it leaves the target marked unfinished: Herald refuses to
  serve it, and running the command again with --restart starts over.
  Afterwards set storage.backend: postgres and start the replicas; keep
  data_dir (TLS material) and the old herald.db as a fallback until satisfied.
  See docs/scaling.md.`

// storagePart is one area's data for migrate-storage: copy moves it from a
// bbolt database into an empty PostgreSQL one (progress is told how many
// records each batch copied); sum counts and checksums it on either backend,
// one TableSum per kind of record.
type storagePart struct {
	name string
	copy func(ctx context.Context, src, dst *store.DB, progress func(n int)) error
	sum  func(ctx context.Context, db *store.DB) ([]store.TableSum, error)
}

// storageParts are copied in this order: the queues' records first, so an
// owner's CopyStorage (mailer's outbox index, invites' delivery index)
// rebuilds its index of them from the target.
func storageParts(cfg *config.Config) []storagePart {
	return []storagePart{
		{name: "outbox", copy: copyQueue("outbox"), sum: sumQueue("outbox")},
		{name: "onbind", copy: copyQueue("onbind"), sum: sumQueue("onbind")},
		{name: "signing keys", copy: copyRing(cfg), sum: sumRing(cfg)},
		{name: "ephemeral keys", copy: keys.CopyStorage, sum: keys.SumStorage},
		{name: "console", copy: admin.CopyStorage, sum: admin.SumStorage},
		{name: "mail", copy: mailer.CopyStorage, sum: mailer.SumStorage},
		{name: "identity", copy: identity.CopyStorage, sum: identity.SumStorage},
		{name: "invites", copy: invites.CopyStorage, sum: invites.SumStorage},
		{name: "sydent import", copy: sydent.CopyStorage, sum: sydent.SumStorage},
	}
}

// The signing keys of a bbolt deployment are files in data_dir/keys, not
// records of its database; on PostgreSQL they are the signing_keys table.
func copyRing(cfg *config.Config) func(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	return func(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
		ring, err := keys.LoadRing(filepath.Join(cfg.DataDir, "keys"), cfg.ServerName)
		if err != nil {
			return err
		}
		if err := keys.CopyRing(ctx, ring, dst); err != nil {
			return err
		}
		progress(len(ring.List()))
		return nil
	}
}

func sumRing(cfg *config.Config) func(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	return func(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
		var ring *keys.Ring
		var err error
		if db.Backend() == store.BackendPostgres {
			ring, err = keys.LoadRingDB(ctx, db, cfg.ServerName)
		} else {
			ring, err = keys.LoadRing(filepath.Join(cfg.DataDir, "keys"), cfg.ServerName)
		}
		if errors.Is(err, keys.ErrNoRing) {
			return []store.TableSum{store.NewSummer("signing_keys").Sum()}, nil
		}
		if err != nil {
			return nil, err
		}
		return []store.TableSum{keys.RingSum(ring)}, nil
	}
}

// queueBackend opens the queue named name on db; nil on bbolt when the
// file has no such queue (nothing to copy, and nothing is created).
func queueBackend(db *store.DB, name string) (queue.Backend, error) {
	if db.PG() != nil {
		return pgqueue.New(db.PG(), name)
	}
	present := false
	if err := db.Bolt().View(func(tx *bolt.Tx) error { present = tx.Bucket([]byte(name)) != nil; return nil }); err != nil || !present {
		return nil, err
	}
	return queue.OpenBolt(db.Bolt(), name)
}

func copyQueue(name string) func(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
	return func(ctx context.Context, src, dst *store.DB, progress func(n int)) error {
		from, err := queueBackend(src, name)
		if err != nil || from == nil {
			return err
		}
		to, err := queueBackend(dst, name)
		if err != nil {
			return err
		}
		_, err = queue.Copy(ctx, from, to, nil, progress)
		return err
	}
}

func sumQueue(name string) func(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
	return func(ctx context.Context, db *store.DB) ([]store.TableSum, error) {
		be, err := queueBackend(db, name)
		if err != nil {
			return nil, err
		}
		s := store.NewSummer("").Sum()
		if be != nil {
			if s, err = queue.Sum(ctx, be); err != nil {
				return nil, err
			}
		}
		s.Table = "queue " + name
		return []store.TableSum{s}, nil
	}
}

func migrateCommand(ctx context.Context, cfg *config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	to, dsn, restart := "", string(cfg.Storage.Postgres.DSN), false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case (a == "--to" || a == "--dsn") && i+1 < len(args):
			if a == "--to" {
				to = args[i+1]
			} else {
				dsn = args[i+1]
			}
			i++
		case strings.HasPrefix(a, "--to="):
			to = strings.TrimPrefix(a, "--to=")
		case strings.HasPrefix(a, "--dsn="):
			dsn = strings.TrimPrefix(a, "--dsn=")
		case a == "--restart":
			restart = true
		default:
			return usageError(migrateUsage)
		}
	}
	if to != "postgres" {
		return usageError(migrateUsage)
	}
	if dsn == "" {
		return errors.New("migrate-storage: no target: give --dsn or set storage.postgres.dsn")
	}
	bdb, err := store.Open(cfg.DataDir, 2*time.Second)
	if err != nil {
		return fmt.Errorf("migrate-storage: the source (stop Herald first): %w", err)
	}
	defer store.Close(bdb, true)
	src := store.NewBolt(bdb)
	popts := server.PostgresOptions(cfg, log)
	popts.DSN = dsn
	pg, err := pgstore.Open(ctx, popts)
	if err != nil {
		return fmt.Errorf("migrate-storage: the target: %w", err)
	}
	dst := store.NewPostgres(pg)
	defer dst.Close()
	// One run at a time per target: a session lock held until the end.
	lock, err := pg.Pool().Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate-storage: the target: %w", err)
	}
	defer func() {
		_ = lock.Conn().Close(context.Background()) // ends the session, and its lock
		lock.Release()
	}()
	var got bool
	if err := lock.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext('herald.migrate-storage'))").Scan(&got); err != nil {
		return fmt.Errorf("migrate-storage: the target: %w", err)
	}
	if !got {
		return errors.New("migrate-storage: another herald migrate-storage is copying into this database")
	}
	parts := storageParts(cfg)
	target, err := prepareTarget(ctx, pg, popts, restart, parts)
	if err != nil {
		return fmt.Errorf("migrate-storage: %w", err)
	}
	if target != pg {
		defer target.Close()
		dst = store.NewPostgres(target)
	}
	return migrate(ctx, src, dst, target, stdout, parts)
}

// prepareTarget refuses a target with data: any record a part would copy
// (rows the schema's migrations seed, such as counters, are not data). With
// restart, a target an interrupted copy left unfinished is emptied first:
// every table of the schema is dropped and the migrations run again, so the
// target is exactly what a fresh database is; the returned pool is then a
// new one on the rebuilt schema. Finally the copy is marked begun.
func prepareTarget(ctx context.Context, pg *pgstore.DB, popts pgstore.Options, restart bool, parts []storagePart) (*pgstore.DB, error) {
	unfinished, err := server.UnfinishedMigration(ctx, pg)
	if err != nil {
		return nil, err
	}
	var finished bool
	if err := pg.Pool().QueryRow(ctx, `SELECT to_regclass('`+server.MigrationTable+`') IS NOT NULL`).Scan(&finished); err != nil {
		return nil, err
	}
	finished = finished && !unfinished
	full, err := targetData(ctx, store.NewPostgres(pg), parts)
	if err != nil {
		return nil, err
	}
	switch {
	case restart && !unfinished:
		return nil, errors.New("--restart empties only a target an interrupted copy left unfinished, and this one is not")
	case full != "" && !restart && unfinished:
		return nil, fmt.Errorf("the target holds an unfinished copy (%s): run again with --restart to empty it and start over", full)
	case full != "" && !restart:
		return nil, fmt.Errorf("the target is not empty (%s): migrate-storage copies into an empty database only", full)
	case finished:
		return nil, errors.New("the target already holds a finished copy")
	}
	if restart {
		if err := dropSchema(ctx, pg); err != nil {
			return nil, fmt.Errorf("emptying the unfinished copy: %w", err)
		}
		if pg, err = pgstore.Open(ctx, popts); err != nil {
			return nil, fmt.Errorf("rebuilding the schema: %w", err)
		}
	}
	err = pgx.BeginFunc(ctx, pg.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+server.MigrationTable+` (
			started timestamptz NOT NULL DEFAULT now(), finished timestamptz)`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM `+server.MigrationTable+`; INSERT INTO `+server.MigrationTable+` DEFAULT VALUES`)
		return err
	})
	return pg, err
}

// targetData names the first kind of record the target already holds ("" if
// none), counted by the parts themselves.
func targetData(ctx context.Context, dst *store.DB, parts []storagePart) (string, error) {
	for _, p := range parts {
		sums, err := p.sum(ctx, dst)
		if err != nil {
			return "", err
		}
		for _, t := range sums {
			if t.Count > 0 {
				return fmt.Sprintf("%d records in %s", t.Count, t.Table), nil
			}
		}
	}
	return "", nil
}

// dropSchema drops every table and sequence of the current schema in one
// transaction: Herald's tables, the migrations' record and the copy's
// marker (Herald's migrations make nothing else).
func dropSchema(ctx context.Context, pg *pgstore.DB) error {
	return pgx.BeginFunc(ctx, pg.Pool(), func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`)
		if err != nil {
			return err
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(tables) == 0 {
			return err
		}
		q := make([]string, len(tables))
		for i, t := range tables {
			q[i] = pgx.Identifier{t}.Sanitize()
		}
		if _, err = tx.Exec(ctx, "DROP TABLE "+strings.Join(q, ", ")+" CASCADE"); err != nil {
			return err
		}
		// Sequences a migration made on their own (not owned by a column).
		rows, err = tx.Query(ctx, `SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = current_schema()`)
		if err != nil {
			return err
		}
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, sq := range seqs {
			if err == nil {
				_, err = tx.Exec(ctx, "DROP SEQUENCE "+pgx.Identifier{sq}.Sanitize())
			}
		}
		return err
	})
}

// migrate copies every part, verifies and marks the copy finished.
func migrate(ctx context.Context, src, dst *store.DB, pg *pgstore.DB, stdout io.Writer, parts []storagePart) error {
	var want []store.TableSum
	total := int64(0)
	for _, p := range parts {
		s, err := p.sum(ctx, src)
		if err != nil {
			return fmt.Errorf("migrate-storage: reading %s: %w", p.name, err)
		}
		for _, t := range s {
			total += t.Count
		}
		want = append(want, s...)
	}
	pr := newProgress(stdout, total)
	for _, p := range parts {
		pr.part(p.name)
		if err := p.copy(ctx, src, dst, pr.add); err != nil {
			pr.stop()
			return fmt.Errorf("migrate-storage: copying %s (the target is left unfinished: run again with --restart): %w", p.name, err)
		}
	}
	pr.stop()
	var got []store.TableSum
	for _, p := range parts {
		s, err := p.sum(ctx, dst)
		if err != nil {
			return fmt.Errorf("migrate-storage: verifying %s: %w", p.name, err)
		}
		got = append(got, s...)
	}
	if diff := printSums(stdout, want, got); diff > 0 {
		return fmt.Errorf("migrate-storage: %d tables differ between bbolt and PostgreSQL: the target is left unfinished", diff)
	}
	if _, err := pg.Pool().Exec(ctx, `UPDATE `+server.MigrationTable+` SET finished = now()`); err != nil {
		return fmt.Errorf("migrate-storage: marking the copy finished: %w", err)
	}
	fmt.Fprintf(stdout, "copied %d records in %s, verified; set storage.backend: postgres and start Herald\n", pr.done, pr.elapsed())
	return nil
}

// printSums prints each table's count and checksum on both sides and
// returns how many differ.
func printSums(w io.Writer, want, got []store.TableSum) int {
	byName := map[string]store.TableSum{}
	for _, g := range got {
		byName[g.Table] = g
	}
	diff := 0
	fmt.Fprintf(w, "%-24s %10s %10s  %-16s %-16s\n", "table", "bbolt", "postgres", "sum bbolt", "sum postgres")
	for _, s := range want {
		g, ok := byName[s.Table]
		verdict := "ok"
		if !ok || g != s {
			verdict, diff = "DIFFERENT", diff+1
		}
		fmt.Fprintf(w, "%-24s %10d %10d  %-16.16s %-16.16s %s\n", s.Table, s.Count, g.Count, s.Sum, g.Sum, verdict)
	}
	if len(got) != len(want) {
		diff++
		fmt.Fprintf(w, "the target has %d tables, the source %d\n", len(got), len(want))
	}
	return diff
}

// copyProgress shows how far the copy is: a line redrawn every second with
// counts and an ETA on a terminal, one summary line per part otherwise.
type copyProgress struct {
	w        io.Writer
	tty      bool
	total    int64
	start    time.Time
	mu       sync.Mutex
	done     int64
	name     string
	partDone int64
	stopc    chan struct{}
	wg       sync.WaitGroup
}

func newProgress(w io.Writer, total int64) *copyProgress {
	p := &copyProgress{w: w, total: total, start: time.Now(), stopc: make(chan struct{})}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-p.stopc:
					return
				case <-t.C:
					p.draw()
				}
			}
		}()
	}
	return p
}

func (p *copyProgress) elapsed() time.Duration { return time.Since(p.start).Round(time.Second) }

func (p *copyProgress) part(name string) {
	p.summary()
	p.mu.Lock()
	p.name, p.partDone = name, 0
	p.mu.Unlock()
}

func (p *copyProgress) add(n int) {
	p.mu.Lock()
	p.done += int64(n)
	p.partDone += int64(n)
	p.mu.Unlock()
}

// summary ends the current part: its line (a terminal keeps the last
// redrawn one).
func (p *copyProgress) summary() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.name == "" {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%-24s %d records\033[K\n", p.name, p.partDone)
		return
	}
	fmt.Fprintf(p.w, "%s: %d records copied (%d of %d, %s)\n", p.name, p.partDone, p.done, p.total, p.elapsed())
}

func (p *copyProgress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	eta := "?"
	if p.done > 0 && p.total >= p.done {
		left := time.Duration(float64(time.Since(p.start)) / float64(p.done) * float64(p.total-p.done))
		eta = left.Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r%s: %d of %d records, %s elapsed, ETA %s\033[K", p.name, p.done, p.total, p.elapsed(), eta)
}

func (p *copyProgress) stop() {
	close(p.stopc)
	p.wg.Wait() // no redraw after the last summary
	p.summary()
	p.mu.Lock()
	p.name = ""
	p.mu.Unlock()
}
