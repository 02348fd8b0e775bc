package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func commitDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "data"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Buckets(db, []byte("b")); err != nil {
		t.Fatal(err)
	}
	return db
}

// An idle Committer commits at once: with bbolt's batch timer set to an
// hour, db.Batch would not return; Do does.
func TestCommitterIdleCommitsAtOnce(t *testing.T) {
	db := commitDB(t)
	db.MaxBatchDelay, db.MaxBatchSize = time.Hour, 1000
	c := NewCommitter(db)
	done := make(chan error, 1)
	go func() {
		done <- c.Do(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("k"), []byte("v")) })
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Do waited for a timer")
	}
	db.View(func(tx *bolt.Tx) error {
		if string(tx.Bucket([]byte("b")).Get([]byte("k"))) != "v" {
			t.Error("not committed")
		}
		return nil
	})
}

// What arrives while a commit is in flight goes into the next transaction
// together; a failing function gets its own error and does not take the
// others down.
func TestCommitterGroupsAndIsolatesFailures(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	entered, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- c.Do(func(tx *bolt.Tx) error {
			close(entered)
			<-release
			return tx.Bucket([]byte("b")).Put([]byte("first"), nil)
		})
	}()
	<-entered
	const n = 20
	boom := errors.New("boom")
	var wg sync.WaitGroup
	var mu sync.Mutex
	txs := map[*bolt.Tx]bool{}
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Do(func(tx *bolt.Tx) error {
				mu.Lock()
				txs[tx] = true
				mu.Unlock()
				if i == 7 {
					return boom
				}
				return tx.Bucket([]byte("b")).Put([]byte(fmt.Sprint("k", i)), nil)
			})
		}()
	}
	// Wait until all n are queued behind the first commit.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		q := len(c.queue)
		c.mu.Unlock()
		if q == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d queued", q)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if i == 7 && !errors.Is(err, boom) || i != 7 && err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	// One try of the whole group, the failing one alone, the rest together.
	if len(txs) != 3 {
		t.Errorf("the %d queued calls ran in %d transactions, want 3", n, len(txs))
	}
	db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		for i := 0; i < n; i++ {
			if got := b.Get([]byte(fmt.Sprint("k", i))) != nil; got != (i != 7) {
				t.Errorf("k%d stored: %v", i, got)
			}
		}
		return nil
	})
}

// A panic in a function panics in its caller, and the Committer goes on.
func TestCommitterPanic(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	func() {
		defer func() {
			if p := recover(); p != "oops" {
				t.Fatalf("recovered %v", p)
			}
		}()
		c.Do(func(*bolt.Tx) error { panic("oops") })
	}()
	if err := c.Do(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("k"), nil) }); err != nil {
		t.Fatal(err)
	}
}
