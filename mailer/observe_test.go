package mailer_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
)

// OnSend hears every recorded attempt with its result and SMTP reply class,
// and Backlog counts pending mail and its age.
func TestQueueOnSendAndBacklog(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	srv.Fail(smtptest.AtRcpt, 451, 1)
	var mu sync.Mutex
	var got []string
	e := newEnv(t, t.TempDir(), srv, func(o *mailer.Options) {
		o.OnSend = func(result, class string) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, result+" "+class)
		}
	})
	defer closeDB(t, e.db)

	// Nothing runs yet: the queued mail waits.
	before := time.Now()
	id := e.enqueue(msg("a@example.org", "deferred then sent"))
	n, oldest, err := e.q.Backlog()
	if err != nil || n != 1 || oldest.Before(before.Add(-time.Second)) || oldest.After(time.Now()) {
		t.Fatalf("backlog = %d, %v, %v", n, oldest, err)
	}
	e.run()
	e.waitState(id, mailer.Sent)
	srv.Fail(smtptest.AtRcpt, 550, 1)
	id = e.enqueue(msg("b@example.org", "refused"))
	e.waitState(id, mailer.Failed)

	// OnSend runs just after the commit that waitState saw.
	want := []string{"deferred 4xx", "sent 2xx", "failed 5xx"}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		mu.Lock()
		heard := slices.Clone(got)
		mu.Unlock()
		if slices.Equal(heard, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("OnSend heard %q, want %q", heard, want)
		}
	}
	if n, oldest, err := e.q.Backlog(); err != nil || n != 0 || !oldest.IsZero() {
		t.Errorf("backlog after sending = %d, %v, %v", n, oldest, err)
	}
}

// Without a reply from the server (nobody listening) the class is "none".
func TestQueueOnSendWithoutReply(t *testing.T) {
	down := smtptest.Start(t, smtptest.Options{})
	heard := make(chan string, 1)
	e := newEnv(t, t.TempDir(), down, func(o *mailer.Options) {
		o.Sender = mailer.NewSMTPSender(mailer.SMTPConfig{Host: "127.0.0.1", Port: 1, Security: "none", Timeout: time.Second})
		o.MaxAttempts = 1
		o.OnSend = func(result, class string) { heard <- result + " " + class }
	})
	defer closeDB(t, e.db)
	e.run()
	id := e.enqueue(msg("a@example.org", "down"))
	e.waitState(id, mailer.Failed)
	select {
	case got := <-heard:
		if got != "failed none" {
			t.Errorf("OnSend heard %q, want \"failed none\"", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnSend never called")
	}
}
