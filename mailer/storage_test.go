package mailer_test

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/internal/pgtest"
	"github.com/herald-im/herald/internal/storetest"
	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/pgstore/pgqueue"
	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func openQueue(t *testing.T, db *store.DB, srv *smtptest.Server) *mailer.Queue {
	t.Helper()
	q, err := mailer.Open(db, mailer.Options{
		Sender:     mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none", Timeout: 5 * time.Second}),
		From:       "Herald <herald@id.example.org>",
		MinBackoff: 2 * time.Millisecond,
		MaxBackoff: 10 * time.Millisecond,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func runQueue(t *testing.T, q *mailer.Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func enqueueOn(t *testing.T, db *store.DB, q *mailer.Queue, m mailer.Message) uint64 {
	t.Helper()
	var id uint64
	if err := db.Update(func(tx *store.Tx) error {
		var err error
		id, err = q.Enqueue(tx, m)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	q.Wake()
	return id
}

// The outbox's storage behaves the same on both backends: its indexes by
// ref and recipient, state reads, deletion by recipient, and sending.
func TestOutboxStorage(t *testing.T) {
	storetest.Run(t, func(t *testing.T, db *store.DB) {
		srv := smtptest.Start(t, smtptest.Options{})
		q := openQueue(t, db, srv)
		a1 := enqueueOn(t, db, q, msg("Alice@Example.org", "one"))
		a2 := enqueueOn(t, db, q, mailer.Message{To: "alice@example.org", Subject: "two", Text: "x", Kind: "validation"})
		b1 := enqueueOn(t, db, q, msg("bob@example.org", "three"))
		if st, err := q.State(a1); err != nil || st != mailer.Pending {
			t.Fatalf("State = %v, %v", st, err)
		}
		byTo, err := q.List(mailer.Filter{To: "ALICE@example.org"})
		if err != nil || len(byTo) != 2 || byTo[0].ID != a2 || byTo[1].ID != a1 {
			t.Fatalf("List by recipient = %+v, %v", byTo, err)
		}
		byRef, err := q.ByRef("invite:three")
		if err != nil || len(byRef) != 1 || byRef[0].ID != b1 {
			t.Fatalf("ByRef = %+v, %v", byRef, err)
		}
		runQueue(t, q)
		srv.WaitFor(3, 10*time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := q.Stats()
			if err == nil && st.Sent == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stats = %+v, %v", st, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if list, _ := q.List(mailer.Filter{State: mailer.Sent}); len(list) != 3 {
			t.Errorf("%d sent mails listed, want 3", len(list))
		}
		n, err := q.DeleteByRecipient(" alice@EXAMPLE.org")
		if err != nil || n != 2 {
			t.Fatalf("DeleteByRecipient = %d, %v", n, err)
		}
		if list, _ := q.List(mailer.Filter{To: "alice@example.org"}); len(list) != 0 {
			t.Errorf("mail to an erased address is still listed: %+v", list)
		}
		if err := q.Drop(b1); err != nil {
			t.Fatal(err)
		}
		if list, _ := q.ByRef("invite:three"); len(list) != 0 {
			t.Errorf("a dropped mail is still indexed by ref")
		}
		sums, err := mailer.SumStorage(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sums {
			if s.Count != 0 {
				t.Errorf("%s keeps %d entries after every mail was deleted", s.Table, s.Count)
			}
		}
	})
}

// Two replicas (two pools on one database) sending from one outbox to a
// real SMTP server, which defers some attempts: every mail goes out exactly
// once, and every attempt the server saw is recorded once (no mail was
// attempted by both replicas at a time).
func TestOutboxTwoReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	dbA, dbB := storetest.OpenPostgres(t, dsn), storetest.OpenPostgres(t, dsn)
	srv := smtptest.Start(t, smtptest.Options{})
	// Some attempts are deferred, so mail is retried, by either replica.
	const deferred = 20
	srv.Fail(smtptest.AtRcpt, 451, deferred)
	qa, qb := openQueue(t, dbA, srv), openQueue(t, dbB, srv)
	runQueue(t, qa)
	runQueue(t, qb)
	const n = 200
	var wg sync.WaitGroup
	for w, side := range []struct {
		db *store.DB
		q  *mailer.Queue
	}{{dbA, qa}, {dbB, qb}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 2 {
				enqueueOn(t, side.db, side.q, msg(fmt.Sprintf("user%d@example.org", i), fmt.Sprintf("m%d", i)))
				// Both replicas are woken, so both claim at once.
				qa.Wake()
				qb.Wake()
			}
		}()
	}
	wg.Wait()
	got := srv.WaitFor(n, 30*time.Second)
	seen := map[string]int{}
	for _, m := range got {
		seen[m.To[0]]++
	}
	for i := range n {
		if c := seen[fmt.Sprintf("user%d@example.org", i)]; c != 1 {
			t.Errorf("mail %d delivered %d times", i, c)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := qb.Stats()
		if err == nil && st.Sent == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats = %+v, %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	list, err := qa.List(mailer.Filter{State: mailer.Sent, Limit: n})
	if err != nil || len(list) != n {
		t.Fatalf("%d sent listed (%v)", len(list), err)
	}
	attempts := 0
	for _, m := range list {
		attempts += len(m.Attempts)
		if len(m.Attempts) == 0 || !m.Attempts[len(m.Attempts)-1].OK {
			t.Errorf("mail %d: attempts %+v", m.ID, m.Attempts)
		}
	}
	// Every attempt is recorded once: one per mail, plus the deferred ones.
	if attempts != n+deferred {
		t.Errorf("%d attempts recorded, want %d", attempts, n+deferred)
	}
	if c := srv.Commands(smtptest.AtRcpt); c != n+deferred {
		t.Errorf("the server saw %d RCPT commands, want %d", c, n+deferred)
	}
	if extra := len(srv.Messages()); extra != n {
		t.Errorf("the server received %d messages, want %d", extra, n)
	}
}

// With PostgreSQL the dev mailbox is shared: a mail saved on one replica is
// listed and read on the other, and the table keeps the newest 1,000.
func TestDevMailboxShared(t *testing.T) {
	dsn := pgtest.DSN(t)
	dbA, dbB := storetest.OpenPostgres(t, dsn), storetest.OpenPostgres(t, dsn)
	a, err := mailer.NewDevMailboxDB(dbA)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := mailer.NewDevMailboxDB(dbB)
	ctx := context.Background()
	raw := testRaw(t, "bob@example.org", "first")
	if err := a.Send(ctx, "herald@id.example.org", []string{"bob@example.org"}, raw); err != nil {
		t.Fatal(err)
	}
	list, err := b.List()
	if err != nil || len(list) != 1 || list[0].Subject != "first" || !strings.Contains(list[0].To, "bob@example.org") || list[0].Size != int64(len(raw)) {
		t.Fatalf("List on the other replica = %+v, %v", list, err)
	}
	if got, err := b.Read(list[0].Name); err != nil || string(got) != string(raw) {
		t.Fatalf("Read = %v", err)
	}
	for _, bad := range []string{"../x.eml", "missing.eml", "x.txt"} {
		if _, err := b.Read(bad); err != mailer.ErrNoSuchFile {
			t.Errorf("Read(%q) = %v", bad, err)
		}
	}
	for i := range mailer.DevMailboxMax + 150 {
		d := a
		if i%2 == 1 {
			d = b
		}
		if err := d.Send(ctx, "herald@id.example.org", []string{"bob@example.org"}, testRaw(t, "bob@example.org", fmt.Sprint("n", i))); err != nil {
			t.Fatal(err)
		}
	}
	list, err = a.List()
	if err != nil || len(list) != mailer.DevMailboxMax || list[0].Subject != fmt.Sprint("n", mailer.DevMailboxMax+149) {
		t.Fatalf("List after %d mails: %d listed, newest %+v, %v", mailer.DevMailboxMax+151, len(list), list[0], err)
	}
	var rows int
	if err := dbA.PG().Pool().QueryRow(ctx, `SELECT count(*) FROM dev_mailbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows > mailer.DevMailboxMax+mailer.DevMailboxMax/10 {
		t.Errorf("the dev mailbox keeps %d rows, more than %d", rows, mailer.DevMailboxMax+mailer.DevMailboxMax/10)
	}
}

// The outbox's own indexes are rebuilt in PostgreSQL from the copied queue
// records, with sums equal to the bbolt source's, and the copy serves.
func TestCopyStorage(t *testing.T) {
	ctx := context.Background()
	src := storetest.Open(t, store.BackendBolt)
	dst := storetest.Open(t, store.BackendPostgres)
	srv := smtptest.Start(t, smtptest.Options{})
	q := openQueue(t, src, srv)
	const n = 2300
	for i := range n {
		m := msg(fmt.Sprintf("User%d@Example.org", i%700), fmt.Sprint("s", i))
		if i%5 == 0 {
			m.Ref = ""
		}
		enqueueOn(t, src, q, m)
	}
	// Stand-in for queue.Copy (migrate-storage copies the queue records
	// first, keeping their ids): the records, in id order, into an empty
	// PostgreSQL queue, whose ids then start at 1 as bbolt's do.
	srcBe, err := queue.OpenBolt(src.Bolt(), "outbox")
	if err != nil {
		t.Fatal(err)
	}
	dstBe, err := pgqueue.New(dst.PG(), "outbox")
	if err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= n; id++ {
		r, err := srcBe.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want := r.ID
		if err := dst.Update(func(tx *store.Tx) error { return dstBe.Enqueue(tx, r) }); err != nil {
			t.Fatal(err)
		}
		if r.ID != want {
			t.Fatalf("record %d copied as %d", want, r.ID)
		}
	}
	var copied int
	if err := mailer.CopyStorage(ctx, src, dst, func(k int) { copied += k }); err != nil {
		t.Fatal(err)
	}
	if copied != n {
		t.Errorf("progress counted %d, want %d", copied, n)
	}
	s1, err := mailer.SumStorage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := mailer.SumStorage(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s1, s2) || len(s1) != 2 || s1[1].Count != n {
		t.Errorf("sums differ: %+v vs %+v", s1, s2)
	}
	pq := openQueue(t, dst, srv)
	want, _ := q.List(mailer.Filter{To: "user7@example.org", Limit: 100})
	got, err := pq.List(mailer.Filter{To: "user7@example.org", Limit: 100})
	if err != nil || len(got) != len(want) || len(got) == 0 || got[0].ID != want[0].ID {
		t.Errorf("the copy lists %d mails to user7, the source %d (%v)", len(got), len(want), err)
	}
}

// explainUsesIndex fails when PostgreSQL plans a sequential scan of a table
// for query (after ANALYZE, on a populated table).
func explainUsesIndex(t *testing.T, db *store.DB, query string, args ...any) {
	t.Helper()
	rows, err := db.PG().Pool().Query(context.Background(), "EXPLAIN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if strings.Contains(strings.Join(plan, "\n"), "Seq Scan") {
		t.Errorf("%s\nscans a whole table:\n%s", query, strings.Join(plan, "\n"))
	}
}

// The outbox index and dev mailbox queries use indexes.
func TestOutboxQueriesUseIndexes(t *testing.T) {
	db := storetest.Open(t, store.BackendPostgres)
	ctx := context.Background()
	pool := db.PG().Pool()
	if _, err := pool.Exec(ctx, `INSERT INTO queue_records (queue, state, created, next_attempt, retry_from)
		SELECT 'outbox', 'done', now(), now(), now() FROM generate_series(1, 20000)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox_to (addr, id) SELECT 'user' || (id % 5000) || '@example.org', id FROM queue_records;
		INSERT INTO outbox_ref (ref, id) SELECT 'invite:' || id, id FROM queue_records;
		INSERT INTO dev_mailbox (name, created, raw) SELECT g || '.eml', now(), 'x' FROM generate_series(1, 5000) g;
		ANALYZE`); err != nil {
		t.Fatal(err)
	}
	explainUsesIndex(t, db, `SELECT id FROM outbox_ref WHERE ref = $1 ORDER BY id DESC`, "invite:7")
	explainUsesIndex(t, db, `SELECT id FROM outbox_to WHERE addr = $1 ORDER BY id DESC`, "user7@example.org")
	explainUsesIndex(t, db, `DELETE FROM outbox_to WHERE addr = $1 AND id = $2`, "user7@example.org", 7)
	explainUsesIndex(t, db, `DELETE FROM outbox_to WHERE id = $1`, 7) // the foreign key's cascade
	explainUsesIndex(t, db, `DELETE FROM outbox_ref WHERE id = $1`, 7)
	explainUsesIndex(t, db, `SELECT name FROM dev_mailbox ORDER BY id DESC LIMIT 1000`)
	explainUsesIndex(t, db, `SELECT raw FROM dev_mailbox WHERE name = $1`, "7.eml")
	explainUsesIndex(t, db, `DELETE FROM dev_mailbox WHERE id < (SELECT id FROM dev_mailbox ORDER BY id DESC OFFSET $1 LIMIT 1)`, 999)
}
