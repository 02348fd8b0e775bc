package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// storage.* keys come from the environment like every other key, and the
// DSN never prints.
func TestStorageFromEnv(t *testing.T) {
	dsn := "postgres://herald:s3cret@db.example.org/herald"
	c, err := Load("", []string{"HERALD_STORAGE_BACKEND=postgres", "HERALD_STORAGE_POSTGRES_DSN=" + dsn,
		"HERALD_STORAGE_POSTGRES_MAX_CONNS=25", "HERALD_STORAGE_POSTGRES_CONNECT_TIMEOUT=2s"})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Storage.Postgres
	if c.Storage.Backend != StoragePostgres || string(p.DSN) != dsn || p.MaxConns != 25 || p.ConnectTimeout.D() != 2*time.Second {
		t.Errorf("storage: %+v", c.Storage)
	}
	if s := fmt.Sprintf("%v %+v %#v", c.Storage, c.Storage, c.Storage); strings.Contains(s, "s3cret") {
		t.Errorf("the DSN prints: %s", s)
	}
}

func TestStorageKeyErrors(t *testing.T) {
	for env, key := range map[string]string{
		"HERALD_STORAGE_BACKEND=sqlite":             "storage.backend",
		"HERALD_STORAGE_BACKEND=postgres":           "storage.postgres.dsn",
		"HERALD_STORAGE_POSTGRES_MAX_CONNS=1":       "storage.postgres.max_conns",
		"HERALD_STORAGE_POSTGRES_MIN_CONNS=11":      "storage.postgres.min_conns",
		"HERALD_STORAGE_POSTGRES_CONNECT_TIMEOUT=0": "storage.postgres.connect_timeout",
	} {
		_, err := Load("", []string{env})
		if err == nil || !strings.Contains(err.Error(), " "+key+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want one line about %s", env, err, key)
		}
	}
}
