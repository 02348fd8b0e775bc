package mailer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/store"
)

// pgMailbox keeps the dev mailbox in the dev_mailbox table, shared by the
// replicas; each save deletes what is beyond the newest DevMailboxMax.
type pgMailbox struct {
	db  *store.DB
	max int
}

// NewDevMailboxDB is the dev mailbox in db's dev_mailbox table
// (PostgreSQL): every replica writes there and every console lists it.
func NewDevMailboxDB(db *store.DB) (*DevMailbox, error) {
	if db.Backend() != store.BackendPostgres {
		return nil, errors.New("mailer: NewDevMailboxDB needs PostgreSQL; on bbolt the dev mailbox is a directory (NewDevMailbox)")
	}
	return &DevMailbox{pg: &pgMailbox{db: db, max: DevMailboxMax}, now: time.Now, max: DevMailboxMax}, nil
}

// FromConfigDB is FromConfig, with the dev mailbox in db when db is
// PostgreSQL (replicas share no data_dir).
func FromConfigDB(c *config.Config, db *store.DB) (s Sender, dev *DevMailbox, err error) {
	if c.SMTP.Host != "" || db == nil || db.Backend() != store.BackendPostgres {
		return FromConfig(c)
	}
	dev, err = NewDevMailboxDB(db)
	return dev, dev, err
}

func (p *pgMailbox) save(ctx context.Context, name string, at time.Time, raw []byte) error {
	to, subject := devHeaders(bytes.NewReader(raw))
	pool := p.db.PG().Pool()
	var id int64
	if err := pool.QueryRow(ctx, `INSERT INTO dev_mailbox (name, recipient, subject, created, raw) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
		name, to, subject, at, raw).Scan(&id); err != nil {
		return fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	// Keep the newest max: everything older than the max-th newest goes.
	// Both statements walk the primary key backwards, max rows at most.
	if id%int64(max(p.max/10, 1)) == 0 {
		if _, err := pool.Exec(ctx, `DELETE FROM dev_mailbox WHERE id < (SELECT id FROM dev_mailbox ORDER BY id DESC OFFSET $1 LIMIT 1)`, p.max-1); err != nil {
			return fmt.Errorf("mailer: dev mailbox: %w", err)
		}
	}
	return nil
}

func (p *pgMailbox) list() ([]DevMail, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := p.db.PG().Pool().Query(ctx, `SELECT name, recipient, subject, created, length(raw) FROM dev_mailbox ORDER BY id DESC LIMIT $1`, p.max)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (DevMail, error) {
		var m DevMail
		err := row.Scan(&m.Name, &m.To, &m.Subject, &m.Date, &m.Size)
		return m, err
	})
}

func (p *pgMailbox) read(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var raw []byte
	err := p.db.PG().Pool().QueryRow(ctx, `SELECT raw FROM dev_mailbox WHERE name = $1`, name).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoSuchFile
	}
	return raw, err
}

// deleteTo deletes the mails addressed to (or naming) want, lower-cased: it
// reads the table (the newest DevMailboxMax rows, and the few a save has not
// pruned yet) and deletes the matching ids in one statement.
func (p *pgMailbox) deleteTo(want string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := p.db.PG().Pool()
	rows, err := pool.Query(ctx, `SELECT id, raw FROM dev_mailbox`)
	if err != nil {
		return 0, fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	var ids []int64
	var id int64
	var raw []byte
	if _, err := pgx.ForEachRow(rows, []any{&id, &raw}, func() error {
		if mentions(raw, want) {
			ids = append(ids, id)
		}
		return nil
	}); err != nil {
		return 0, fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := pool.Exec(ctx, `DELETE FROM dev_mailbox WHERE id = ANY($1)`, ids)
	if err != nil {
		return 0, fmt.Errorf("mailer: dev mailbox: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
