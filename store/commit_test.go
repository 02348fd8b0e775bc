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
	awaitErr(t, done, "Do waited for a timer")
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
	release := holdCommit(c, putKey("first", nil))
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
	waitQueued(t, c, n, false) // all n behind the first commit
	if err := release(); err != nil {
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

// waitQueued waits until n calls are queued in c.
func waitQueued(t *testing.T, c *Committer, n int, lingering bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		k := 0
		for _, call := range c.queue {
			if call.lingering == lingering {
				k++
			}
		}
		c.mu.Unlock()
		if k == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued (lingering %v), want %d", k, lingering, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitErr fails the test with ch's error, or with stuck if none comes
// within 30 s.
func awaitErr(t *testing.T, ch <-chan error, stuck string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal(stuck)
	}
}

// holdCommit starts c.Do(fn) and returns once fn runs, its commit in
// flight; release lets fn return and gives Do's error.
func holdCommit(c *Committer, fn func(*bolt.Tx) error) (release func() error) {
	entered, done := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- c.Do(func(tx *bolt.Tx) error {
			close(entered)
			<-done
			return fn(tx)
		})
	}()
	<-entered
	return func() error {
		close(done)
		return <-first
	}
}

func putKey(k string, txs chan<- *bolt.Tx) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		if txs != nil {
			txs <- tx
		}
		return tx.Bucket([]byte("b")).Put([]byte(k), []byte("v"))
	}
}

// A DoSoon on an idle writer does not commit alone while it may linger: the
// next Do takes it along, one transaction for both.
func TestCommitterDoSoonJoinsTheNextCommit(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	txs := make(chan *bolt.Tx, 2)
	soon := make(chan error, 1)
	go func() { soon <- c.DoSoon(putKey("soon", txs), time.Hour) }()
	waitQueued(t, c, 1, true)
	if err := c.Do(putKey("now", txs)); err != nil {
		t.Fatal(err)
	}
	awaitErr(t, soon, "DoSoon did not return after the commit that took it")
	if a, b := <-txs, <-txs; a != b {
		t.Error("DoSoon and Do were committed in two transactions")
	}
}

// With nobody to join, DoSoon commits alone once its time is up.
func TestCommitterDoSoonCommitsAloneAfterLinger(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	if err := c.DoSoon(putKey("soon", nil), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("b")).Get([]byte("soon")) == nil {
			t.Error("not committed")
		}
		return nil
	})
}

// A lingering DoSoon queued behind a commit in flight is not handed the
// lead when that commit ends; a Do queued with it is, and takes it along.
func TestCommitterLingeringCallIsNotHandedTheLead(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	release := holdCommit(c, func(*bolt.Tx) error { return nil })
	txs := make(chan *bolt.Tx, 2)
	soon := make(chan error, 1)
	go func() { soon <- c.DoSoon(putKey("soon", txs), time.Hour) }()
	waitQueued(t, c, 1, true)
	if err := release(); err != nil {
		t.Fatal(err)
	}
	// The commit in flight ended with only a lingering call queued: nobody
	// leads, and the call waits.
	c.mu.Lock()
	leading, queued := c.leading, len(c.queue)
	c.mu.Unlock()
	if leading || queued != 1 {
		t.Fatalf("after the first commit: leading %v, %d queued; want no leader, the lingering call queued", leading, queued)
	}
	if err := c.Do(putKey("now", txs)); err != nil {
		t.Fatal(err)
	}
	if err := <-soon; err != nil {
		t.Fatal(err)
	}
	if a, b := <-txs, <-txs; a != b {
		t.Error("DoSoon and Do were committed in two transactions")
	}
}

// A DoSoon whose time ran out while a commit was in flight is handed the
// lead when that commit ends.
func TestCommitterDoSoonLeadsAfterACommitInFlight(t *testing.T) {
	db := commitDB(t)
	c := NewCommitter(db)
	release := holdCommit(c, func(*bolt.Tx) error { return nil })
	soon := make(chan error, 1)
	go func() { soon <- c.DoSoon(putKey("soon", nil), time.Millisecond) }()
	waitQueued(t, c, 1, false) // its time is up, the first commit still in flight
	if err := release(); err != nil {
		t.Fatal(err)
	}
	awaitErr(t, soon, "DoSoon was never handed the lead")
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("b")).Get([]byte("soon")) == nil {
			t.Error("not committed")
		}
		return nil
	})
}
