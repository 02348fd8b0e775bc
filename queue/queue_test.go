package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/queue/queuetest"
	"github.com/herald-im/herald/store"
)

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestBoltConformance(t *testing.T) {
	// Directly on the file, and through a group committer as the server
	// opens its queues (CommitThrough).
	for _, grouped := range []bool{false, true} {
		name := "direct"
		if grouped {
			name = "group commit"
		}
		t.Run(name, func(t *testing.T) {
			queuetest.RunConformance(t, func(t *testing.T) (queue.Backend, func() queue.Backend) {
				path := filepath.Join(t.TempDir(), "q.db")
				db := openDB(t, path)
				t.Cleanup(func() { db.Close() })
				open := func() queue.Backend {
					be, err := queue.OpenBolt(db, "q")
					if err != nil {
						t.Fatal(err)
					}
					if grouped {
						be.CommitThrough(store.NewCommitter(db))
					}
					return be
				}
				return open(), func() queue.Backend {
					db.Close()
					db = openDB(t, path)
					return open()
				}
			})
		})
	}
}

// clock is an injected clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// harness runs a Queue over a Bolt backend in a temporary file, with a
// deliver function the test scripts.
type harness struct {
	t     *testing.T
	path  string
	db    *bolt.DB
	be    *queue.Bolt
	q     *queue.Queue
	clk   *clock
	opts  queue.Options
	stop  func()
	calls atomic.Int64
	// answer decides each attempt; default OK.
	answer func(ctx context.Context, r *queue.Record) queue.Outcome
	amu    sync.Mutex
}

func newHarness(t *testing.T, mutate func(*queue.Options)) *harness {
	return newHarnessAt(t, filepath.Join(t.TempDir(), "q.db"), mutate)
}

// newHarnessAt runs a queue on the database file at path (new or not).
func newHarnessAt(t *testing.T, path string, mutate func(*queue.Options)) *harness {
	h := &harness{t: t, path: path,
		clk: &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	h.opts = queue.Options{Name: "test", MinBackoff: time.Second, MaxBackoff: time.Minute, Now: h.clk.Now,
		Deliver: func(ctx context.Context, r *queue.Record) queue.Outcome {
			h.calls.Add(1)
			h.amu.Lock()
			a := h.answer
			h.amu.Unlock()
			if a == nil {
				return queue.Outcome{Class: queue.OK, Reply: "ok"}
			}
			return a(ctx, r)
		}}
	if mutate != nil {
		mutate(&h.opts)
	}
	h.open()
	t.Cleanup(h.close)
	return h
}

func (h *harness) setAnswer(a func(ctx context.Context, r *queue.Record) queue.Outcome) {
	h.amu.Lock()
	h.answer = a
	h.amu.Unlock()
}

func (h *harness) open() {
	h.db = openDB(h.t, h.path)
	var err error
	be, err := queue.OpenBolt(h.db, "q")
	if err != nil {
		h.t.Fatal(err)
	}
	h.be = be.CommitThrough(store.NewCommitter(h.db)) // as the server opens its queues
	if h.q, err = queue.New(h.be, h.opts); err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.q.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Error(err)
		}
	}
}

func (h *harness) close() {
	if h.stop != nil {
		h.stop()
		h.stop = nil
		h.db.Close()
	}
}

// restart stops the worker, closes the file and opens it again.
func (h *harness) restart() {
	h.close()
	h.open()
}

func (h *harness) enqueue(kind string, data string) uint64 {
	h.t.Helper()
	r := &queue.Record{Kind: kind, Data: []byte(data)}
	if err := h.db.Update(func(tx *bolt.Tx) error { return h.q.Enqueue(tx, r) }); err != nil {
		h.t.Fatal(err)
	}
	h.q.Wake()
	return r.ID
}

func (h *harness) get(id uint64) *queue.Record {
	h.t.Helper()
	r, err := h.q.Get(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (h *harness) waitAttempts(id uint64, n int) *queue.Record {
	h.t.Helper()
	var r *queue.Record
	h.waitFor(fmt.Sprintf("record %d to have %d attempts", id, n), func() bool {
		r = h.get(id)
		return len(r.Attempts) >= n && (r.State != queue.Pending || !r.NextAttempt.Before(r.Attempts[len(r.Attempts)-1].At))
	})
	if len(r.Attempts) != n {
		h.t.Fatalf("record %d: %d attempts, want %d", id, len(r.Attempts), n)
	}
	return r
}

func TestDeliversOnWakeAndTrimsDone(t *testing.T) {
	h := newHarness(t, func(o *queue.Options) { o.TrimDone = true })
	id := h.enqueue("", "secret token")
	r := h.waitAttempts(id, 1)
	if r.State != queue.Done || !r.Attempts[0].OK || r.Attempts[0].Reply != "ok" || r.Data != nil {
		t.Fatalf("after delivery: %+v", r)
	}
	if s, _ := h.q.Stats(context.Background()); s.Done != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// Attempts grow as MinBackoff·2^(n-1) up to MaxBackoff; a kind's cap lowers
// both the cap and the first wait; a Retry-After longer than the backoff wins.
func TestBackoffExponentialCappedPerKindAndRetryAfter(t *testing.T) {
	h := newHarness(t, func(o *queue.Options) {
		o.MinBackoff, o.MaxBackoff = 10*time.Second, 80*time.Second
		o.KindMaxBackoff = map[string]time.Duration{"fast": 5 * time.Second}
	})
	h.setAnswer(func(_ context.Context, r *queue.Record) queue.Outcome {
		if string(r.Data) == "slow-down" {
			return queue.Outcome{Class: queue.Temporary, Reply: "429", RetryAfter: 10 * time.Minute}
		}
		return queue.Outcome{Class: queue.Temporary, Reply: "421 busy"}
	})
	id := h.enqueue("", "x")
	want := []time.Duration{10, 20, 40, 80, 80}
	for n, w := range want {
		r := h.waitAttempts(id, n+1)
		if got := r.NextAttempt.Sub(r.Attempts[n].At); got != w*time.Second {
			t.Fatalf("wait after attempt %d = %v, want %v", n+1, got, w*time.Second)
		}
		if r.LastError != "421 busy" || !r.Attempts[n].Temporary {
			t.Fatalf("attempt %d: %+v", n+1, r)
		}
		// Not attempted before it is due.
		h.clk.Add(w*time.Second - time.Millisecond)
		h.q.Wake()
		if r := h.get(id); len(r.Attempts) != n+1 {
			t.Fatalf("attempted early")
		}
		h.clk.Add(time.Millisecond)
		h.q.Wake()
	}
	fast := h.enqueue("fast", "y")
	if r := h.waitAttempts(fast, 1); r.NextAttempt.Sub(r.Attempts[0].At) != 5*time.Second {
		t.Fatalf("kind cap: first wait %v", r.NextAttempt.Sub(r.Attempts[0].At))
	}
	slow := h.enqueue("", "slow-down")
	if r := h.waitAttempts(slow, 1); r.NextAttempt.Sub(r.Attempts[0].At) != 10*time.Minute {
		t.Fatalf("Retry-After: wait %v", r.NextAttempt.Sub(r.Attempts[0].At))
	}
}

func TestGivesUpAfterPeriodAndRetryGivesFreshBudget(t *testing.T) {
	h := newHarness(t, func(o *queue.Options) {
		o.MinBackoff, o.MaxBackoff, o.GiveUpAfter = time.Minute, time.Minute, 150*time.Second
	})
	h.setAnswer(func(context.Context, *queue.Record) queue.Outcome {
		return queue.Outcome{Class: queue.Temporary, Reply: "timeout"}
	})
	id := h.enqueue("", "x")
	h.waitAttempts(id, 1)
	h.clk.Add(time.Minute)
	h.q.Wake()
	h.waitAttempts(id, 2)
	h.clk.Add(time.Minute)
	h.q.Wake()
	// The third wait would end at 3 min, past the 150 s budget: failed now.
	r := h.waitAttempts(id, 3)
	if r.State != queue.Failed || !strings.HasPrefix(r.LastError, "gave up after 2m30s: timeout") {
		t.Fatalf("after the budget: %s %q", r.State, r.LastError)
	}
	h.setAnswer(nil)
	if err := h.q.Retry(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	r = h.waitAttempts(id, 4)
	if r.State != queue.Done || r.RetryBase != 3 {
		t.Fatalf("after Retry: %s base %d", r.State, r.RetryBase)
	}
	if err := h.q.Retry(context.Background(), id); !errors.Is(err, queue.ErrState) {
		t.Fatalf("Retry of a done record = %v, want ErrState", err)
	}
	if err := h.q.Retry(context.Background(), 999); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Retry(999) = %v", err)
	}
}

func TestMaxAttemptsAndPermanent(t *testing.T) {
	h := newHarness(t, func(o *queue.Options) { o.MaxAttempts = 2; o.MinBackoff = time.Second })
	h.setAnswer(func(_ context.Context, r *queue.Record) queue.Outcome {
		if string(r.Data) == "refuse" {
			return queue.Outcome{Class: queue.Permanent, Reply: "550 no such user", Detail: []byte(`{"status":550}`)}
		}
		return queue.Outcome{Class: queue.Temporary, Reply: "451"}
	})
	perm := h.enqueue("", "refuse")
	if r := h.waitAttempts(perm, 1); r.State != queue.Failed || r.LastError != "550 no such user" || string(r.Attempts[0].Detail) != `{"status":550}` {
		t.Fatalf("permanent: %+v", r)
	}
	id := h.enqueue("", "x")
	h.waitAttempts(id, 1)
	h.clk.Add(time.Second)
	h.q.Wake()
	if r := h.waitAttempts(id, 2); r.State != queue.Failed {
		t.Fatalf("after MaxAttempts: %s", r.State)
	}
	if s, _ := h.q.Stats(context.Background()); s.Failed != 2 || s.FailedAttempts != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCancelDropAndDelete(t *testing.T) {
	h := newHarness(t, nil)
	h.setAnswer(func(_ context.Context, r *queue.Record) queue.Outcome {
		if string(r.Data) == "gone" {
			return queue.Outcome{Class: queue.Cancel, Reply: "nothing left to deliver"}
		}
		return queue.Outcome{Class: queue.Temporary, Reply: "503"}
	})
	gone := h.enqueue("", "gone")
	h.waitFor("cancel", func() bool { return h.get(gone).State == queue.Cancelled })
	if r := h.get(gone); len(r.Attempts) != 0 || r.LastError != "nothing left to deliver" {
		t.Fatalf("cancelled: %+v", r)
	}
	a, b, c := h.enqueue("", "a"), h.enqueue("", "b"), h.enqueue("", "c")
	for _, id := range []uint64{a, b, c} {
		h.waitAttempts(id, 1)
	}
	if err := h.q.Drop(context.Background(), "dropped by an operator", a, b); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{a, b} {
		if r := h.get(id); r.State != queue.Cancelled || r.LastError != "dropped by an operator" || len(r.Attempts) != 1 {
			t.Fatalf("dropped: %+v", r)
		}
	}
	// A bulk action is one transaction: one bad id changes nothing.
	if err := h.q.Drop(context.Background(), "x", c, a); !errors.Is(err, queue.ErrState) {
		t.Fatalf("Drop of a cancelled record = %v", err)
	}
	if r := h.get(c); r.State != queue.Pending {
		t.Fatalf("a failed bulk Drop changed %d: %s", c, r.State)
	}
	h.clk.Add(time.Hour)
	h.q.Wake()
	h.waitAttempts(c, 2)
	if len(h.get(a).Attempts) != 1 {
		t.Fatal("a dropped record was attempted")
	}
	if err := h.q.Delete(context.Background(), a, c); err != nil {
		t.Fatal(err)
	}
	if _, err := h.q.Get(context.Background(), c); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if s, _ := h.q.Stats(context.Background()); s.Pending != 0 || s.Cancelled != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// A restart resumes pending records at once and never sends again what was
// recorded as done; a crash during an attempt (the worker gone before the
// outcome is recorded) attempts it again after the reopen.
func TestRestartResumesAndCrashRetriesUnrecorded(t *testing.T) {
	h := newHarness(t, nil)
	done := h.enqueue("", "done-before")
	h.waitAttempts(done, 1)
	started := make(chan uint64, 4)
	h.setAnswer(func(ctx context.Context, r *queue.Record) queue.Outcome {
		started <- r.ID
		<-ctx.Done()
		return queue.Outcome{Class: queue.Abandon}
	})
	inflight := h.enqueue("", "in-flight")
	if got := <-started; got != inflight {
		t.Fatalf("attempted %d", got)
	}
	// The worker stops while the attempt hangs: like a kill, nothing about
	// this attempt reaches the database.
	h.close()
	h.setAnswer(nil)
	h.open()
	r := h.waitAttempts(inflight, 1)
	if r.State != queue.Done {
		t.Fatalf("after the restart: %s", r.State)
	}
	calls := h.calls.Load()
	h.restart()
	h.q.Wake()
	more := h.enqueue("", "after")
	h.waitAttempts(more, 1)
	if n := h.calls.Load() - calls; n != 1 {
		t.Fatalf("%d attempts after the second restart, want 1 (nothing done sent again)", n)
	}
	if r := h.get(done); len(r.Attempts) != 1 {
		t.Fatalf("done record attempted again: %d attempts", len(r.Attempts))
	}
}

// A record that cannot be loaded is held back with the backoff, not picked
// again at once; the others are delivered meanwhile; Retry asks again now.
func TestUnloadableRecordIsBackedOff(t *testing.T) {
	h := newHarness(t, func(o *queue.Options) { o.MinBackoff, o.MaxBackoff = time.Hour, time.Hour })
	h.stop() // write the broken record with no worker running
	h.stop = nil
	var broken uint64
	if err := h.db.Update(func(tx *bolt.Tx) error {
		r := &queue.Record{Data: []byte("x")}
		if err := h.q.Enqueue(tx, r); err != nil {
			return err
		}
		broken = r.ID
		return tx.Bucket([]byte("q")).Put(u64(broken), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	h.db.Close()
	h.open()
	ok := h.enqueue("", "fine")
	h.waitAttempts(ok, 1)
	// Many wake-ups: the broken record must not be claimed for each.
	for range 50 {
		h.q.Wake()
	}
	ok2 := h.enqueue("", "fine too")
	h.waitAttempts(ok2, 1)
	if n := h.calls.Load(); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
	c, next, err := h.be.Claim(context.Background(), h.clk.Now(), 10, time.Minute)
	if err != nil || len(c) != 0 || !next.Equal(h.clk.Now().Add(time.Hour)) {
		t.Fatalf("the broken record is not held back for the backoff: claimed %d, next %v (now %v)", len(c), next, h.clk.Now())
	}
}

// A crash (kill -9) leaves on disk what was committed: a snapshot of the
// file taken while an attempt is under way is that state. A queue opened on
// it attempts the record again, and never the one recorded as done.
func TestCrashSnapshotAttemptsUnrecordedOnly(t *testing.T) {
	h := newHarness(t, nil)
	done := h.enqueue("", "done")
	h.waitAttempts(done, 1)
	started := make(chan uint64, 1)
	h.setAnswer(func(ctx context.Context, r *queue.Record) queue.Outcome {
		started <- r.ID
		<-ctx.Done()
		return queue.Outcome{Class: queue.Abandon}
	})
	inflight := h.enqueue("", "in flight")
	<-started
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	if err := h.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(crashed, 0o600) }); err != nil {
		t.Fatal(err)
	}
	h2 := newHarnessAt(t, crashed, nil)
	r := h2.waitAttempts(inflight, 1)
	if r.State != queue.Done || h2.calls.Load() != 1 {
		t.Fatalf("after the crash: %s, %d attempts made (want only the unrecorded one)", r.State, h2.calls.Load())
	}
	if r := h2.get(done); len(r.Attempts) != 1 {
		t.Fatalf("the recorded success was attempted again: %d attempts", len(r.Attempts))
	}
}

// Workers attempts run at once.
func TestWorkersRunInParallel(t *testing.T) {
	const workers = 4
	var mu sync.Mutex
	running, peak := 0, 0
	release := make(chan struct{})
	h := newHarness(t, func(o *queue.Options) { o.Workers = workers })
	h.setAnswer(func(context.Context, *queue.Record) queue.Outcome {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		return queue.Outcome{Class: queue.OK}
	})
	var ids []uint64
	for i := range 10 {
		ids = append(ids, h.enqueue("", fmt.Sprint(i)))
	}
	h.waitFor("4 attempts at once", func() bool { mu.Lock(); defer mu.Unlock(); return running == workers })
	close(release)
	for _, id := range ids {
		h.waitAttempts(id, 1)
	}
	if peak != workers {
		t.Fatalf("peak %d attempts at once, want %d", peak, workers)
	}
}

func TestRetentionDeletesOldFinishedOnly(t *testing.T) {
	var deleted atomic.Int64
	h := newHarness(t, func(o *queue.Options) {
		o.Retention = 24 * time.Hour
		o.OnDelete = func(tx queue.Tx, r *queue.Record) error { deleted.Add(1); return nil }
	})
	h.setAnswer(func(_ context.Context, r *queue.Record) queue.Outcome {
		if string(r.Data) == "keep-pending" {
			return queue.Outcome{Class: queue.Temporary, Reply: "451"}
		}
		return queue.Outcome{Class: queue.OK}
	})
	old := h.enqueue("", "old")
	pend := h.enqueue("", "keep-pending")
	h.waitAttempts(old, 1)
	h.waitAttempts(pend, 1)
	h.clk.Add(25 * time.Hour)
	recent := h.enqueue("", "recent")
	h.waitAttempts(recent, 1)
	h.restart() // prune runs at start, then hourly
	h.waitFor("retention", func() bool { _, err := h.q.Get(context.Background(), old); return errors.Is(err, queue.ErrNotFound) })
	for _, id := range []uint64{pend, recent} {
		if _, err := h.q.Get(context.Background(), id); err != nil {
			t.Fatalf("record %d deleted: %v", id, err)
		}
	}
	if deleted.Load() != 1 {
		t.Fatalf("OnDelete called %d times", deleted.Load())
	}
}

func TestBacklogAndListPages(t *testing.T) {
	h := newHarness(t, nil)
	h.setAnswer(func(context.Context, *queue.Record) queue.Outcome {
		return queue.Outcome{Class: queue.Temporary, Reply: "451"}
	})
	first := h.enqueue("", "a")
	h.clk.Add(time.Minute)
	for range 4 {
		h.enqueue("", "b")
	}
	n, oldest, err := h.q.Backlog(context.Background())
	if err != nil || n != 5 || !oldest.Equal(h.get(first).RetryFrom) {
		t.Fatalf("Backlog = %d %v %v", n, oldest, err)
	}
	page, _ := h.q.List(context.Background(), queue.Page{State: queue.Pending, Limit: 2})
	rest, _ := h.q.List(context.Background(), queue.Page{State: queue.Pending, Before: page[1].ID, Limit: 10})
	if len(page) != 2 || len(rest) != 3 || rest[2].ID != first {
		t.Fatalf("pages %d + %d", len(page), len(rest))
	}
}

func TestBackoffIsCappedExponential(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "q.db"))
	defer db.Close()
	be, err := queue.OpenBolt(db, "q")
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(be, queue.Options{MinBackoff: time.Second, MaxBackoff: 10 * time.Second,
		Deliver: func(context.Context, *queue.Record) queue.Outcome { return queue.Outcome{} }})
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for n, w := range want {
		if got := q.Backoff("", n); got != w {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, w)
		}
	}
	if got := q.Backoff("", 5000); got != 10*time.Second {
		t.Errorf("Backoff(5000) = %v", got)
	}
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

// ctxClaimer is a Bolt whose Claim heeds its context, as a networked
// backend's does: it waits until ctx ends and returns its error.
type ctxClaimer struct {
	*queue.Bolt
	claiming chan struct{}
}

func (c ctxClaimer) Claim(ctx context.Context, now time.Time, n int, lease time.Duration) ([]queue.Claimed, time.Time, error) {
	select {
	case c.claiming <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, time.Time{}, ctx.Err()
}

// errorLog records what is logged at error level.
type errorLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *errorLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

// A claim cut short by shutdown is no error: Run returns without logging.
func TestShutdownDuringClaimLogsNothing(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "q.db"))
	t.Cleanup(func() { db.Close() })
	bo, err := queue.OpenBolt(db, "q")
	if err != nil {
		t.Fatal(err)
	}
	be := ctxClaimer{Bolt: bo, claiming: make(chan struct{}, 1)}
	var logged errorLog
	q, err := queue.New(be, queue.Options{
		Deliver: func(context.Context, *queue.Record) queue.Outcome { return queue.Outcome{Class: queue.OK} },
		Log:     slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	select {
	case <-be.claiming:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never claimed")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	logged.mu.Lock()
	defer logged.mu.Unlock()
	if len(logged.lines) != 0 {
		t.Fatalf("logged at shutdown: %q", logged.lines)
	}
}
