// Package storetest runs storage tests against every backend, the way Dex's
// storage/conformance runs one suite against each of its storages: a feature
// package writes its storage tests once, as a function of a *store.DB, and
// Run calls it with a fresh bbolt file and with a fresh PostgreSQL database.
//
// A package using it calls pgtest.Main from its TestMain (the throwaway
// PostgreSQL cluster is shared by the test binary and removed at the end).
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/pgstore"
	"github.com/herald-im/herald/store"
)

// Backends lists what Run runs against, in order.
var Backends = []store.Backend{store.BackendBolt, store.BackendPostgres}

// Run runs fn as one subtest per backend, each on an empty database of its
// own, closed when the subtest ends.
func Run(t *testing.T, fn func(t *testing.T, db *store.DB)) {
	t.Helper()
	for _, b := range Backends {
		t.Run(string(b), func(t *testing.T) { fn(t, Open(t, b)) })
	}
}

// Open returns an empty database on backend b for this test alone.
func Open(t testing.TB, b store.Backend) *store.DB {
	t.Helper()
	switch b {
	case store.BackendBolt:
		bdb, err := store.Open(t.TempDir(), time.Second)
		if err != nil {
			t.Fatalf("storetest: open bbolt: %v", err)
		}
		db := store.NewBolt(bdb)
		t.Cleanup(func() { db.Close() })
		return db
	case store.BackendPostgres:
		return OpenPostgres(t, pgtest.DSN(t))
	}
	t.Fatalf("storetest: unknown backend %q", b)
	return nil
}

// OpenPostgres opens one replica's pool on dsn (migrations applied), closed
// when the test ends. Two calls on one DSN are two replicas.
func OpenPostgres(t testing.TB, dsn string) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pg, err := pgstore.Open(ctx, pgstore.Options{DSN: dsn})
	if err != nil {
		t.Fatalf("storetest: open PostgreSQL: %v", err)
	}
	db := store.NewPostgres(pg)
	t.Cleanup(func() { db.Close() })
	return db
}
