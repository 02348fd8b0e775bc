package mailer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/internal/background"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/store"
)

func openDB(t testing.TB, dir string) *store.DB {
	t.Helper()
	bdb, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db := store.NewBolt(bdb)
	return db
}

// closeDB checks the file's consistency and closes it. The check runs in a
// write transaction: a queue may still be running (tests stop it in a
// cleanup, after their deferred closeDB), and bbolt's Check reads the
// freelist, which a concurrent writer changes.
func closeDB(t testing.TB, db *store.DB) {
	t.Helper()
	err := db.Update(func(tx *store.Tx) error {
		for err := range tx.Bolt.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Errorf("bbolt consistency: %v", err)
	}
	db.Close()
}

type env struct {
	t   *testing.T
	db  *store.DB
	q   *mailer.Queue
	srv *smtptest.Server
}

func newEnv(t *testing.T, dir string, srv *smtptest.Server, mod func(*mailer.Options)) *env {
	t.Helper()
	db := openDB(t, dir)
	opts := mailer.Options{
		Sender:     mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second}),
		From:       "Herald <herald@id.example.org>",
		MinBackoff: 2 * time.Millisecond,
		MaxBackoff: 10 * time.Millisecond,
	}
	if mod != nil {
		mod(&opts)
	}
	q, err := mailer.Open(db, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, q: q, srv: srv}
}

// run starts the worker; the returned func stops it and waits for it.
func (e *env) run() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.q.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Run: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *env) enqueue(m mailer.Message) uint64 {
	e.t.Helper()
	var id uint64
	err := e.db.Update(func(tx *store.Tx) error {
		var err error
		id, err = e.q.Enqueue(tx, m)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.q.Wake()
	return id
}

// waitFor polls the mail until cond holds (a wait, not a timing assertion).
func (e *env) waitFor(id uint64, what string, cond func(mailer.Mail) bool) mailer.Mail {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := e.q.Get(id)
		if err == nil && cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("mail %d never %s (last: %+v, %v)", id, what, m, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (e *env) waitState(id uint64, s mailer.State) mailer.Mail {
	e.t.Helper()
	return e.waitFor(id, string(s), func(m mailer.Mail) bool { return m.State == s })
}

func msg(to, subject string) mailer.Message {
	return mailer.Message{To: to, Subject: subject, Text: "Hello " + subject, Kind: "invite", Ref: "invite:" + subject}
}

func TestQueueSendsAfterWake(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	// The stored bytes are read before the worker runs: a sent mail keeps
	// its timeline, not its body.
	id := e.enqueue(msg("Alice@Example.org", "one"))
	queued, err := e.q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	stop := e.run()
	got := srv.WaitFor(1, 5*time.Second)
	m := e.waitState(id, mailer.Sent)
	stop()
	if m.Raw != nil {
		t.Error("a sent mail kept its body")
	}
	m.Raw = queued.Raw
	if len(m.Attempts) != 1 || !m.Attempts[0].OK || !strings.HasPrefix(m.Attempts[0].Reply, "250 2.0.0 ") {
		t.Errorf("attempts = %+v", m.Attempts)
	}
	if string(got[0].Data) != string(m.Raw) {
		t.Error("server received different bytes from those stored")
	}
	if got[0].From != "herald@id.example.org" || got[0].To[0] != "Alice@Example.org" {
		t.Errorf("envelope %q -> %q", got[0].From, got[0].To)
	}
	if m.Subject != "one" || m.Kind != "invite" || m.Ref != "invite:one" || m.To != "Alice@Example.org" {
		t.Errorf("mail = %+v", m)
	}
}

func TestQueueEnqueueIsTransactional(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	e.run()
	boom := errors.New("caller's change failed")
	err := e.db.Update(func(tx *store.Tx) error {
		if _, err := e.q.Enqueue(tx, msg("a@example.org", "rolled-back")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	e.q.Wake()
	id := e.enqueue(msg("a@example.org", "committed"))
	e.waitState(id, mailer.Sent)
	if msgs := srv.Messages(); len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "committed") {
		t.Errorf("server got %d messages", len(msgs))
	}
	all, _ := e.q.List(mailer.Filter{})
	if len(all) != 1 {
		t.Errorf("%d mails stored, want 1", len(all))
	}
	// Invalid messages are refused at enqueue.
	err = e.db.Update(func(tx *store.Tx) error {
		_, err := e.q.Enqueue(tx, mailer.Message{To: "a@example.org", Subject: "x\r\nBcc: b@example.org", Text: "x"})
		return err
	})
	if !errors.Is(err, mailer.ErrInvalidMessage) {
		t.Errorf("err = %v", err)
	}
}

func TestQueueRetriesTemporaryFailures(t *testing.T) {
	for _, stage := range []smtptest.Stage{smtptest.AtMail, smtptest.AtRcpt, smtptest.AtData} {
		t.Run(string(stage), func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{})
			srv.Fail(stage, 451, 2)
			e := newEnv(t, t.TempDir(), srv, nil)
			defer closeDB(t, e.db)
			e.run()
			id := e.enqueue(msg("a@example.org", "retry"))
			m := e.waitState(id, mailer.Sent)
			if len(m.Attempts) != 3 {
				t.Fatalf("%d attempts, want 3: %+v", len(m.Attempts), m.Attempts)
			}
			for _, a := range m.Attempts[:2] {
				if a.OK || !a.Temporary || !strings.Contains(a.Reply, "451") || !strings.Contains(a.Reply, "injected failure") {
					t.Errorf("attempt %+v: want a temporary failure with the server's 451 reply", a)
				}
			}
			if !m.Attempts[2].OK {
				t.Errorf("last attempt %+v", m.Attempts[2])
			}
			if n := len(srv.Messages()); n != 1 {
				t.Errorf("server accepted %d messages", n)
			}
			st, err := e.q.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st != (mailer.Stats{Sent: 1, FailedAttempts: 2}) {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestQueueRetriesAuthAndNetworkErrors(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{Username: "u", Password: "p"})
	srv.Fail(smtptest.AtAuth, 454, 1)
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.Sender = mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Username: "u", Password: "p", Timeout: 5 * time.Second})
	})
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("a@example.org", "auth"))
	m := e.waitState(id, mailer.Sent)
	if len(m.Attempts) != 2 || !m.Attempts[0].Temporary || !strings.Contains(m.Attempts[0].Reply, "454") {
		t.Errorf("attempts = %+v", m.Attempts)
	}

	// Nobody listening: a network error is temporary, and the mail fails
	// once MaxAttempts is used up.
	down := smtptest.Start(t, smtptest.Options{})
	e2 := newEnv(t, t.TempDir(), down, func(o *mailer.Options) {
		o.Sender = mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: 1, Security: "none", Timeout: time.Second})
		o.MaxAttempts = 3
	})
	defer closeDB(t, e2.db)
	e2.run()
	id = e2.enqueue(msg("a@example.org", "down"))
	m = e2.waitState(id, mailer.Failed)
	if len(m.Attempts) != 3 {
		t.Fatalf("%d attempts, want 3", len(m.Attempts))
	}
	for _, a := range m.Attempts {
		if a.OK || !a.Temporary || a.Reply == "" {
			t.Errorf("attempt %+v", a)
		}
	}
}

func TestQueuePermanentFailureAndRetry(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	srv.Fail(smtptest.AtRcpt, 550, 1)
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("nobody@example.org", "perm"))
	m := e.waitState(id, mailer.Failed)
	if len(m.Attempts) != 1 || m.Attempts[0].Temporary || !strings.Contains(m.Attempts[0].Reply, "550") {
		t.Fatalf("attempts = %+v", m.Attempts)
	}
	if st, _ := e.q.Stats(); st.Failed != 1 || st.Pending != 0 || st.FailedAttempts != 1 {
		t.Errorf("stats = %+v", st)
	}
	if failed, _ := e.q.List(mailer.Filter{State: mailer.Failed}); len(failed) != 1 || failed[0].ID != id {
		t.Errorf("failed list = %+v", failed)
	}
	// An operator retries it.
	if err := e.q.Retry(id); err != nil {
		t.Fatal(err)
	}
	m = e.waitState(id, mailer.Sent)
	if len(m.Attempts) != 2 || !m.Attempts[1].OK {
		t.Errorf("attempts = %+v", m.Attempts)
	}
	if err := e.q.Retry(id); !errors.Is(err, mailer.ErrState) {
		t.Errorf("retry of sent mail: %v", err)
	}
	if err := e.q.Retry(999); !errors.Is(err, mailer.ErrNotFound) {
		t.Errorf("retry of unknown mail: %v", err)
	}
	if len(srv.Messages()) != 1 {
		t.Errorf("server accepted %d messages", len(srv.Messages()))
	}
}

func TestQueueResumesAfterRestartWithoutResending(t *testing.T) {
	dir := t.TempDir()
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, dir, srv, nil)
	stop := e.run()
	sent := e.enqueue(msg("a@example.org", "sent-before-restart"))
	e.waitState(sent, mailer.Sent)
	srv.Fail(smtptest.AtData, 421, -1)
	deferred := e.enqueue(msg("b@example.org", "deferred"))
	e.waitFor(deferred, "attempted", func(m mailer.Mail) bool { return len(m.Attempts) >= 1 })
	stop()
	// Queued while no worker runs: never attempted before the restart.
	unattempted := e.enqueue(msg("c@example.org", "unattempted"))
	closeDB(t, e.db)

	srv.Fail(smtptest.AtData, 0, 0)
	e = newEnv(t, dir, srv, nil)
	defer closeDB(t, e.db)
	e.run()
	d := e.waitState(deferred, mailer.Sent)
	u := e.waitState(unattempted, mailer.Sent)
	if !d.Attempts[0].Temporary || d.Attempts[len(d.Attempts)-1].OK != true {
		t.Errorf("deferred attempts = %+v", d.Attempts)
	}
	if len(u.Attempts) != 1 {
		t.Errorf("unattempted attempts = %+v", u.Attempts)
	}
	msgs := srv.Messages()
	count := map[string]int{}
	for _, m := range msgs {
		for _, s := range []string{"sent-before-restart", "deferred", "unattempted"} {
			if strings.Contains(string(m.Data), "Subject: "+s) {
				count[s]++
			}
		}
	}
	if len(msgs) != 3 || count["sent-before-restart"] != 1 || count["deferred"] != 1 || count["unattempted"] != 1 {
		t.Errorf("server got %d messages: %v", len(msgs), count)
	}
	if m, _ := e.q.Get(sent); len(m.Attempts) != 1 {
		t.Errorf("mail sent before the restart was attempted again: %+v", m.Attempts)
	}
}

func TestQueueListFilterDropErase(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	// No worker: everything stays pending.
	var ids []uint64
	for i := range 6 {
		m := msg(fmt.Sprintf("user%d@example.org", i%3), fmt.Sprint(i))
		m.Ref = fmt.Sprintf("invite:%d", i%2)
		if i == 5 {
			m.Kind = "validation"
			m.To = "USER2@Example.ORG"
		}
		ids = append(ids, e.enqueue(m))
	}
	all, err := e.q.List(mailer.Filter{})
	if err != nil || len(all) != 6 {
		t.Fatalf("List = %d, %v", len(all), err)
	}
	for i, m := range all {
		if m.ID != ids[5-i] {
			t.Errorf("List not newest first: position %d has %d", i, m.ID)
		}
		if m.Raw != nil {
			t.Error("List returned Raw")
		}
	}
	page, _ := e.q.List(mailer.Filter{Limit: 2, Offset: 2})
	if len(page) != 2 || page[0].ID != ids[3] || page[1].ID != ids[2] {
		t.Errorf("page = %+v", page)
	}
	if l, _ := e.q.List(mailer.Filter{Kind: "validation"}); len(l) != 1 || l[0].ID != ids[5] {
		t.Errorf("kind filter = %+v", l)
	}
	if l, _ := e.q.List(mailer.Filter{State: mailer.Pending, Ref: "invite:1", Limit: 1}); len(l) != 1 || l[0].ID != ids[5] {
		t.Errorf("state+ref filter = %+v", l)
	}
	if l, _ := e.q.List(mailer.Filter{State: mailer.Sent}); len(l) != 0 {
		t.Errorf("sent filter = %+v", l)
	}
	if l, _ := e.q.List(mailer.Filter{To: "user2@EXAMPLE.org"}); len(l) != 2 {
		t.Errorf("to filter = %d", len(l))
	}
	byRef, _ := e.q.ByRef("invite:0")
	if len(byRef) != 3 || byRef[0].ID != ids[4] || byRef[2].ID != ids[0] {
		t.Errorf("ByRef = %+v", byRef)
	}
	if st, _ := e.q.Stats(); st != (mailer.Stats{Pending: 6}) {
		t.Errorf("stats = %+v", st)
	}

	if err := e.q.Drop(ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.q.Get(ids[0]); !errors.Is(err, mailer.ErrNotFound) {
		t.Errorf("dropped mail: %v", err)
	}
	if err := e.q.Drop(ids[0]); !errors.Is(err, mailer.ErrNotFound) {
		t.Errorf("second drop: %v", err)
	}
	n, err := e.q.DeleteByRecipient("User2@example.org")
	if err != nil || n != 2 {
		t.Errorf("DeleteByRecipient = %d, %v", n, err)
	}
	if st, _ := e.q.Stats(); st.Pending != 3 {
		t.Errorf("stats after erase = %+v", st)
	}
	if l, _ := e.q.List(mailer.Filter{To: "user2@example.org"}); len(l) != 0 {
		t.Errorf("erased mail still listed: %+v", l)
	}

	// The worker sends what is left, and nothing that was dropped.
	e.run()
	e.q.Wake()
	srv.WaitFor(3, 5*time.Second)
	for _, id := range []uint64{ids[1], ids[3], ids[4]} {
		e.waitState(id, mailer.Sent)
	}
	if n := len(srv.Messages()); n != 3 {
		t.Errorf("server got %d messages, want 3", n)
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestQueueInjectedClockAndRetention(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	clk := &clock{t: fixedDate}
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.Now = clk.Now
		o.NewMessageID = func() string { return "<fixed@id.example.org>" }
		o.Retention = time.Hour
	})
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("a@example.org", "golden"))
	got := srv.WaitFor(1, 5*time.Second)
	want, err := mailer.Compose(msg("a@example.org", "golden"), "Herald <herald@id.example.org>", fixedDate, "<fixed@id.example.org>")
	if err != nil {
		t.Fatal(err)
	}
	if string(got[0].Data) != string(want) {
		t.Errorf("queued mail differs from Compose with the same clock and id:\n%s\n---\n%s", got[0].Data, want)
	}
	m := e.waitState(id, mailer.Sent)
	if !m.Created.Equal(fixedDate) {
		t.Errorf("created = %v", m.Created)
	}
	clk.Add(2 * time.Hour)
	e.q.Wake()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.q.Get(id); errors.Is(err, mailer.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sent mail past its retention was not deleted")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if l, _ := e.q.List(mailer.Filter{}); len(l) != 0 {
		t.Errorf("list after retention = %+v", l)
	}
}

// A backlog larger than one group (Prepare before the transaction,
// EnqueuePrepared inside it, many mails per commit) is sent exactly once
// each, every attempt recorded.
func TestQueueSendsBacklogInGroupsOnce(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	const n = 75
	var ids []uint64
	err := e.db.Update(func(tx *store.Tx) error {
		for i := range n {
			p, err := e.q.Prepare(msg(fmt.Sprintf("user%d@example.org", i), fmt.Sprint(i)))
			if err != nil {
				return err
			}
			id, err := e.q.EnqueuePrepared(tx, p)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := e.run()
	got := srv.WaitFor(n, 10*time.Second)
	for _, id := range ids {
		if m := e.waitState(id, mailer.Sent); len(m.Attempts) != 1 || !m.Attempts[0].OK {
			t.Errorf("mail %d attempts = %+v", id, m.Attempts)
		}
	}
	stop()
	if len(srv.Messages()) != n || len(got) < n {
		t.Errorf("server got %d messages, want %d", len(srv.Messages()), n)
	}
	seen := map[string]bool{}
	for _, m := range srv.Messages() {
		if seen[m.To[0]] {
			t.Errorf("%s received twice", m.To[0])
		}
		seen[m.To[0]] = true
	}
}

// smtp.max_backoff caps every wait, the first included: a cap below the
// default first wait (30 s) is not raised to it.
func TestQueueMaxBackoffBelowDefaultMinimumCapsFirstWait(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	srv.Fail(smtptest.AtData, 451, 1)
	clk := &clock{t: fixedDate}
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.Now = clk.Now
		o.MinBackoff = 0 // the default, as mailer.OptionsFromConfig leaves it
		o.MaxBackoff = 10 * time.Second
	})
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("a@example.org", "capped"))
	m := e.waitFor(id, "attempted once", func(m mailer.Mail) bool { return len(m.Attempts) == 1 })
	if got := m.NextAttempt.Sub(m.LastAttempt().At); got != 10*time.Second {
		t.Fatalf("the first retry is %v later, want the 10s cap", got)
	}
	clk.Add(10 * time.Second)
	e.q.Wake()
	e.waitState(id, mailer.Sent)
}

// Temporary failures are retried after MinBackoff·2^(n-1), capped at
// MaxBackoff: the clock is injected and only moves when the test moves it.
func TestQueueBackoffIsExponentialAndCapped(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	srv.Fail(smtptest.AtRcpt, 451, 5)
	clk := &clock{t: fixedDate}
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.Now = clk.Now
		o.MinBackoff = time.Minute
		o.MaxBackoff = 5 * time.Minute
	})
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("a@example.org", "backoff"))
	for n, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		m := e.waitFor(id, fmt.Sprintf("attempted %d times", n+1), func(m mailer.Mail) bool { return len(m.Attempts) == n+1 })
		last := m.LastAttempt()
		if m.State != mailer.Pending || last.OK || !last.Temporary || !strings.Contains(last.Reply, "451") {
			t.Fatalf("attempt %d: %+v", n+1, m)
		}
		if got := m.NextAttempt.Sub(last.At); got != want {
			t.Errorf("after attempt %d the next is %v later, want %v", n+1, got, want)
		}
		// Not due yet: a wake-up sends nothing.
		clk.Add(want - time.Second)
		e.q.Wake()
		if got, _ := e.q.Get(id); len(got.Attempts) != n+1 {
			t.Fatalf("attempt %d made before its time: %+v", n+2, got.Attempts)
		}
		clk.Add(time.Second)
		e.q.Wake()
	}
	m := e.waitState(id, mailer.Sent)
	if len(m.Attempts) != 6 || len(srv.Messages()) != 1 {
		t.Errorf("attempts %+v, %d messages", m.Attempts, len(srv.Messages()))
	}
}

// A deferred validation mail is retried at least every KindMaxBackoff (its
// code is useless after minutes), while other mail backs off to MaxBackoff;
// OptionsFromConfig sets smtp.validation_max_backoff for "validation".
func TestQueueValidationMailBackoffCapped(t *testing.T) {
	cfg := config.Default()
	if got := mailer.OptionsFromConfig(&cfg, nil).KindMaxBackoff["validation"]; got != time.Minute {
		t.Fatalf("validation cap from the default config: %v, want 1m", got)
	}
	srv := smtptest.Start(t, smtptest.Options{})
	srv.Fail(smtptest.AtRcpt, 451, -1)
	clk := &clock{t: fixedDate}
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.Now = clk.Now
		o.MinBackoff, o.MaxBackoff = 30*time.Second, time.Hour
		o.KindMaxBackoff = map[string]time.Duration{"validation": time.Minute}
	})
	defer closeDB(t, e.db)
	e.run()
	val := msg("v@example.org", "code")
	val.Kind = "validation"
	vid := e.enqueue(val)
	iid := e.enqueue(msg("i@example.org", "invite"))
	for n, want := range []struct{ val, inv time.Duration }{{30 * time.Second, 30 * time.Second}, {time.Minute, time.Minute}, {time.Minute, 2 * time.Minute}} {
		for _, c := range []struct {
			id   uint64
			want time.Duration
		}{{vid, want.val}, {iid, want.inv}} {
			m := e.waitFor(c.id, fmt.Sprintf("attempted %d times", n+1), func(m mailer.Mail) bool { return len(m.Attempts) == n+1 })
			if got := m.NextAttempt.Sub(m.LastAttempt().At); got != c.want {
				t.Errorf("%s mail after attempt %d: next in %v, want %v", m.Kind, n+1, got, c.want)
			}
		}
		clk.Add(max(want.val, want.inv))
		e.q.Wake()
	}
}

// panicOnce panics on its first Send, then sends through next.
type panicOnce struct {
	next     *mailer.SMTPSender
	panicked atomic.Bool
}

func (p *panicOnce) Send(ctx context.Context, from string, to []string, raw []byte) error {
	if !p.panicked.Swap(true) {
		panic("a bug in sending")
	}
	return p.next.Send(ctx, from, to, raw)
}

func (p *panicOnce) Close() error { return p.next.Close() }

// The server runs the worker again after a panic (internal/background).
// Run closed its sender on the way out of the panic, so the restarted
// worker failed every send with "SMTP sender closed".
func TestQueueKeepsItsSenderAcrossAPanic(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	sender := &panicOnce{next: mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second})}
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) { o.Sender = sender })
	defer closeDB(t, e.db)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		background.Runner{Log: slog.New(slog.DiscardHandler), RestartDelay: time.Millisecond}.Run(ctx, "mail worker", e.q.Run)
	}()
	defer func() { cancel(); <-done }()
	id := e.enqueue(msg("alice@example.org", "one"))
	m := e.waitFor(id, "sent or failed", func(m mailer.Mail) bool { return m.State == mailer.Sent || m.State == mailer.Failed })
	if m.State != mailer.Sent || !sender.panicked.Load() {
		t.Fatalf("mail %s after the worker's panic, attempts %+v", m.State, m.Attempts)
	}
}

// State reads a mail's state without its payload, and agrees with Get.
func TestQueueState(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	id := e.enqueue(msg("alice@example.org", "state"))
	if st, err := e.q.State(id); err != nil || st != mailer.Pending {
		t.Fatalf("State of a queued mail = %q, %v; want pending", st, err)
	}
	stop := e.run()
	defer stop()
	e.waitState(id, mailer.Sent)
	if st, err := e.q.State(id); err != nil || st != mailer.Sent {
		t.Fatalf("State of a sent mail = %q, %v; want sent", st, err)
	}
	if _, err := e.q.State(id + 100); !errors.Is(err, mailer.ErrNotFound) {
		t.Fatalf("State of no mail: %v, want ErrNotFound", err)
	}
}

// The server receives the very bytes Prepare composed, whether the mail is
// stored as Compose's inputs (its recipient, subject and Message-ID read
// from its meta) or, when a caller changed the Prepared's subject after
// Prepare, as the composed bytes.
func TestPreparedMailIsSentAsComposed(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	e := newEnv(t, t.TempDir(), srv, nil)
	defer closeDB(t, e.db)
	m := msg("Carol@Example.org", "Tea & Cake — invité")
	m.HTML = "<p>" + strings.Repeat("Hello = world ", 20) + "</p>"
	m.Headers = map[string]string{"List-Unsubscribe": "<https://id.example.org/optout?token=abc>"}
	p1, err := e.q.Prepare(m)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := e.q.Prepare(m)
	if err != nil {
		t.Fatal(err)
	}
	p2.Subject = "changed after Prepare"
	err = e.db.Update(func(tx *store.Tx) error {
		for _, p := range []*mailer.Prepared{p1, p2} {
			if _, err := e.q.EnqueuePrepared(tx, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.q.Wake()
	stop := e.run()
	got := srv.WaitFor(2, 5*time.Second)
	stop()
	want := map[string]bool{string(p1.Raw): true, string(p2.Raw): true}
	for _, g := range got {
		if !want[string(g.Data)] {
			t.Errorf("server received bytes Prepare did not compose:\n%s", g.Data)
		}
		delete(want, string(g.Data))
	}
}
