package config

import (
	"fmt"
	"time"
)

// Storage selects where Herald keeps its data.
type Storage struct {
	// Backend is bbolt (one file in data_dir, one Herald process) or
	// postgres (a shared PostgreSQL database, any number of replicas).
	Backend string `yaml:"backend"`
	// Postgres configures the postgres backend.
	Postgres Postgres `yaml:"postgres"`
}

// Postgres configures the PostgreSQL connection pool of one replica.
type Postgres struct {
	// DSN is a libpq connection string or URL. It may hold a password, so
	// it never prints (HERALD_STORAGE_POSTGRES_DSN keeps it out of the file).
	DSN Secret `yaml:"dsn"`
	// MaxConns bounds this replica's pool (replicas x max_conns, plus a
	// few listening connections each, must fit PostgreSQL's
	// max_connections: docs/scaling.md).
	MaxConns int `yaml:"max_conns"`
	// MinConns are kept open while idle.
	MinConns int `yaml:"min_conns"`
	// ConnectTimeout bounds each new connection.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// MaxConnLifetime closes a connection after this long, so connections
	// move to a new primary or a rebalanced pooler.
	MaxConnLifetime Duration `yaml:"max_conn_lifetime"`
}

// Storage backends (storage.backend).
const (
	StorageBolt     = "bbolt"
	StoragePostgres = "postgres"
)

func defaultStorage() Storage {
	return Storage{Backend: StorageBolt, Postgres: Postgres{MaxConns: 10,
		ConnectTimeout: Duration(5 * time.Second), MaxConnLifetime: Duration(30 * time.Minute)}}
}

// validateStorage checks the storage section.
func (c *Config) validateStorage() error {
	s := c.Storage
	switch s.Backend {
	case StorageBolt, StoragePostgres:
	default:
		return keyErr("storage.backend", fmt.Sprintf("must be bbolt or postgres (got %q)", s.Backend))
	}
	p := s.Postgres
	if s.Backend == StoragePostgres && p.DSN == "" {
		return keyErr("storage.postgres.dsn", "must be set when storage.backend is postgres (e.g. postgres://herald@db/herald)")
	}
	// Two at the least: a bind holds one for its transaction and takes a
	// second for a moment (invites' address check), and a periodic job one
	// for its lock and one for its work.
	if p.MaxConns < 2 || p.MaxConns > 10000 {
		return keyErr("storage.postgres.max_conns", fmt.Sprintf("must be between 2 and 10000 (got %d)", p.MaxConns))
	}
	if p.MinConns < 0 || p.MinConns > p.MaxConns {
		return keyErr("storage.postgres.min_conns", fmt.Sprintf("must be between 0 and storage.postgres.max_conns (got %d)", p.MinConns))
	}
	if p.ConnectTimeout <= 0 {
		return keyErr("storage.postgres.connect_timeout", "must be positive")
	}
	if p.MaxConnLifetime <= 0 {
		return keyErr("storage.postgres.max_conn_lifetime", "must be positive")
	}
	return nil
}
