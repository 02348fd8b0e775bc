package mailer_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/store"
)

type nopSender struct{}

func (nopSender) Send(context.Context, string, []string, []byte) error { return nil }

func benchQueue(b *testing.B) (*store.DB, *mailer.Queue) {
	dir := b.TempDir()
	db := openDB(b, dir)
	b.Cleanup(func() { closeDB(b, db) })
	q, err := mailer.Open(db, mailer.Options{Sender: nopSender{}, From: from}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return db, q
}

var benchMsg = mailer.Message{
	To: "alice@example.org", Subject: "Bob invited you to Tea & Cake", Kind: "invite", Ref: "invite:1",
	Text:    "Hi,\nBob invited you to Tea & Cake.\nJoin: https://app.example.org/#/room/!abc:example.org\n",
	HTML:    "<p>Bob invited you to <b>Tea &amp; Cake</b>. <a href=\"https://app.example.org/#/room/!abc:example.org\">Join</a></p>",
	Headers: map[string]string{"List-Unsubscribe": "<mailto:unsubscribe@id.example.org>"},
}

// BenchmarkEnqueue: one durable transaction (fsync) per mail.
func BenchmarkEnqueue(b *testing.B) {
	db, q := benchQueue(b)
	for b.Loop() {
		if err := db.Update(func(tx *store.Tx) error { _, err := q.Enqueue(tx, benchMsg); return err }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueueBatch: concurrent callers through bbolt's Batch, which
// groups their commits, as store-invite does.
func BenchmarkEnqueueBatch(b *testing.B) {
	db, q := benchQueue(b)
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := db.Commit(func(tx *store.Tx) error { _, err := q.Enqueue(tx, benchMsg); return err }); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEnqueuePreparedBatch: as BenchmarkEnqueueBatch, composed before
// the transaction (Prepare) so the Batch function only writes, as
// store-invite does.
func BenchmarkEnqueuePreparedBatch(b *testing.B) {
	db, q := benchQueue(b)
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := q.Prepare(benchMsg)
			if err != nil {
				b.Error(err)
				return
			}
			if err := db.Commit(func(tx *store.Tx) error { _, err := q.EnqueuePrepared(tx, p); return err }); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCompose: composing alone, no storage.
func BenchmarkCompose(b *testing.B) {
	for b.Loop() {
		if _, err := mailer.Compose(benchMsg, from, fixedDate, "<x@id.example.org>"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDelivery: enqueue, wake and wait until an in-process SMTP server
// (plain, one reused connection) has accepted every mail.
func BenchmarkDelivery(b *testing.B) {
	srv := smtptest.Start(b, smtptest.Options{})
	db := openDB(b, b.TempDir())
	b.Cleanup(func() { closeDB(b, db) })
	q, err := mailer.Open(db, mailer.Options{From: from,
		Sender: mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none"})}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := db.Update(func(tx *store.Tx) error { _, err := q.Enqueue(tx, benchMsg); return err }); err != nil {
			b.Fatal(err)
		}
		q.Wake()
	}
	srv.WaitFor(b.N, time.Minute)
}

// inUse is the bytes the database's pages hold for the named buckets
// (leaf and branch pages in use, inline buckets included).
func inUse(b testing.TB, db *store.DB, names ...string) int {
	n := 0
	err := db.View(func(tx *store.Tx) error {
		for _, name := range names {
			if bk := tx.Bolt.Bucket([]byte(name)); bk != nil {
				s := bk.Stats()
				n += s.LeafInuse + s.BranchInuse + s.InlineBucketInuse
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

var outboxBuckets = []string{"outbox", "outbox_data", "outbox_due", "outbox_state", "outbox_fail", "outbox_count", "outbox_ref", "outbox_to"}

// BenchmarkEnqueueAndSend: concurrent callers enqueue through bbolt's Batch
// (as store-invite does) while the worker sends over 1 or 4 SMTP
// connections to an in-process SMTP server; the clock stops when the server
// has accepted every mail. It reports mails/s and the database bytes per
// mail, queued (before the worker runs) and sent (body removed).
func BenchmarkEnqueueAndSend(b *testing.B) {
	for _, conns := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) {
			srv := smtptest.Start(b, smtptest.Options{})
			db := openDB(b, b.TempDir())
			b.Cleanup(func() { closeDB(b, db) })
			pool := mailer.NewSMTPPool(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none"}, conns)
			q, err := mailer.Open(db, mailer.Options{From: from, Sender: pool, Connections: conns}, nil)
			if err != nil {
				b.Fatal(err)
			}
			base := inUse(b, db, outboxBuckets...)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			go func() { q.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			var wg sync.WaitGroup
			next := make(chan struct{}, b.N)
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						p, err := q.Prepare(benchMsg)
						if err == nil {
							err = db.Commit(func(tx *store.Tx) error { _, err := q.EnqueuePrepared(tx, p); return err })
						}
						if err != nil {
							b.Error(err)
							return
						}
						q.Wake()
					}
				}()
			}
			wg.Wait()
			srv.WaitFor(b.N, time.Minute)
			for {
				if s, _ := q.Stats(); s.Sent == b.N {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "mails/s")
			b.ReportMetric(float64(inUse(b, db, outboxBuckets...)-base)/float64(b.N), "B/sent-mail")
		})
	}
}

// BenchmarkQueuedMailSize: the database bytes of a queued (not yet sent)
// mail, its compressed body included.
func BenchmarkQueuedMailSize(b *testing.B) {
	db, q := benchQueue(b)
	base := inUse(b, db, outboxBuckets...)
	for b.Loop() {
		if err := db.Update(func(tx *store.Tx) error { _, err := q.Enqueue(tx, benchMsg); return err }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(inUse(b, db, outboxBuckets...)-base)/float64(b.N), "B/queued-mail")
}

// BenchmarkDrainBacklog: b.N mails are queued first (not timed); the clock
// runs while the worker sends them all over 1 or 4 SMTP connections to an
// in-process SMTP server: the outbox's own sending rate.
func BenchmarkDrainBacklog(b *testing.B) {
	for _, conns := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) {
			srv := smtptest.Start(b, smtptest.Options{})
			db := openDB(b, b.TempDir())
			b.Cleanup(func() { closeDB(b, db) })
			pool := mailer.NewSMTPPool(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none"}, conns)
			q, err := mailer.Open(db, mailer.Options{From: from, Sender: pool, Connections: conns}, nil)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i += 500 {
				err := db.Update(func(tx *store.Tx) error {
					for range min(500, b.N-i) {
						if _, err := q.Enqueue(tx, benchMsg); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			go func() { q.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			for {
				if s, _ := q.Stats(); s.Sent == b.N {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "mails/s")
		})
	}
}

// BenchmarkSMTPSend: one SMTPSender sends messages one after another to an
// in-process SMTP server on loopback (smtptest.Raw, plain), with and
// without PIPELINING offered: four round trips per message without, two
// with. ns/op is the time per message; cpu-µs/op the CPU of the whole
// process (sender and server) per message.
func BenchmarkSMTPSend(b *testing.B) {
	raw, err := mailer.Compose(benchMsg, from, fixedDate, "<x@id.example.org>")
	if err != nil {
		b.Fatal(err)
	}
	for _, pipelining := range []bool{false, true} {
		b.Run(fmt.Sprintf("pipelining=%v", pipelining), func(b *testing.B) {
			srv := smtptest.StartRaw(b, smtptest.RawOptions{Pipelining: pipelining, CountOnly: true})
			s := mailer.NewSMTPSender(mailer.SMTPConfig{Host: srv.Host, Port: srv.Port, Security: "none"})
			defer s.Close()
			ctx := context.Background()
			to := []string{"alice@example.org"}
			// Connected before the clock starts.
			if err := s.Send(ctx, "herald@id.example.org", to, raw); err != nil {
				b.Fatal(err)
			}
			var cpu0 time.Duration
			for i := 0; b.Loop(); i++ {
				if i == 0 {
					cpu0 = cpuTime()
				}
				if err := s.Send(ctx, "herald@id.example.org", to, raw); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			if n := srv.Delivered(); n != b.N+1 {
				b.Fatalf("%d messages delivered, want %d", n, b.N+1)
			}
		})
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
