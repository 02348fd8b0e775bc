package sydent

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	_ "modernc.org/sqlite" // pure-Go SQLite: the binary stays cgo-free
)

// required lists the tables and columns the import reads; a database
// without them is not a sydent database (or one too old to import).
var required = map[string][]string{
	"global_threepid_associations": {"medium", "address", "mxid", "ts", "notBefore", "notAfter"},
	"local_threepid_associations":  {"medium", "address", "mxid", "ts", "notBefore", "notAfter"},
	"invite_tokens":                {"medium", "address", "room_id", "sender", "token", "received_ts", "sent_ts"},
	"ephemeral_public_keys":        {"id", "public_key"},
}

// optional tables appeared in later sydent versions; absent, their part of
// the import is reported as missing.
var optional = map[string][]string{
	"hashing_metadata":    {"lookup_pepper"},
	"accounts":            {"user_id", "created_ts"},
	"tokens":              {"token", "user_id"},
	"accepted_terms_urls": {"user_id", "url"},
}

// source is an open, checked sydent database.
type source struct {
	db     *sql.DB
	path   string
	tables map[string]bool
}

// openSource opens path read-only and checks that it is an undamaged sydent
// database. Every error is one line naming the file.
func openSource(ctx context.Context, path string) (*source, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("sydent database: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("sydent database %s: not a regular file", path)
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sydent database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &source{db: db, path: path, tables: map[string]bool{}}
	if err := s.check(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *source) Close() error { return s.db.Close() }

func (s *source) fail(format string, args ...any) error {
	return fmt.Errorf("sydent database %s: %s", s.path, fmt.Sprintf(format, args...))
}

func (s *source) check(ctx context.Context) error {
	rows, err := s.db.QueryContext(ctx, "SELECT name FROM sqlite_master WHERE type = 'table'")
	if err != nil {
		return s.fail("not a readable SQLite database (%s)", sqliteMessage(err))
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return s.fail("not a readable SQLite database (%s)", sqliteMessage(err))
		}
		s.tables[name] = true
	}
	if err := rows.Close(); err != nil {
		return s.fail("not a readable SQLite database (%s)", sqliteMessage(err))
	}
	if err := rows.Err(); err != nil {
		return s.fail("not a readable SQLite database (%s)", sqliteMessage(err))
	}
	for _, t := range []string{"global_threepid_associations", "local_threepid_associations", "invite_tokens", "ephemeral_public_keys"} {
		if !s.tables[t] {
			return s.fail("not a sydent database (no table %s)", t)
		}
		if err := s.checkColumns(ctx, t, required[t]); err != nil {
			return err
		}
	}
	for t, cols := range optional {
		if s.tables[t] {
			if err := s.checkColumns(ctx, t, cols); err != nil {
				return err
			}
		}
	}
	// quick_check reads every page: a damaged file is refused before
	// anything is imported from it.
	var res string
	if err := s.db.QueryRowContext(ctx, "PRAGMA quick_check(1)").Scan(&res); err != nil {
		return s.fail("damaged (%s)", sqliteMessage(err))
	}
	if res != "ok" {
		return s.fail("damaged (integrity check: %s)", oneLine(res))
	}
	return nil
}

func (s *source) checkColumns(ctx context.Context, table string, cols []string) error {
	rows, err := s.db.QueryContext(ctx, "SELECT name FROM pragma_table_info(?)", table)
	if err != nil {
		return s.fail("damaged (%s)", sqliteMessage(err))
	}
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return s.fail("damaged (%s)", sqliteMessage(err))
		}
		have[strings.ToLower(n)] = true
	}
	rows.Close()
	for _, c := range cols {
		if !have[strings.ToLower(c)] {
			return s.fail("not a sydent database this import knows (table %s has no column %s)", table, c)
		}
	}
	return nil
}

func (s *source) count(ctx context.Context, query string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, query).Scan(&n)
	if err != nil {
		return 0, s.fail("%s", sqliteMessage(err))
	}
	return n, nil
}

// sqliteMessage is the driver's message without its repeated prefixes.
func sqliteMessage(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	msg := oneLine(err.Error())
	if strings.Contains(msg, "database is locked") {
		return msg + "; stop sydent first"
	}
	return msg
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
