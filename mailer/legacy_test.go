package mailer_test

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/herald-im/herald/mailer"
	"github.com/herald-im/herald/mailer/smtptest"
	"github.com/herald-im/herald/store"
)

// A database written by the outbox before the queue package (its own
// buckets, whole messages in mail_raw) is converted at Open: the pending
// mail keeps its id and is sent, the sent one keeps its timeline, new mail
// gets a higher id, and the old buckets are gone.
func TestQueueConvertsTheOldOutbox(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{})
	dir := t.TempDir()
	db := openDB(t, dir)
	id := func(v uint64) []byte { b := make([]byte, 8); binary.BigEndian.PutUint64(b, v); return b }
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Format(time.RFC3339Nano)
	raw := "From: Herald <herald@id.example.org>\r\nTo: old@example.org\r\nSubject: old pending\r\nMessage-ID: <m7@id.example.org>\r\n\r\nhello\r\n"
	err := db.Update(func(tx *store.Tx) error {
		mb, _ := tx.Bolt.CreateBucket([]byte("mail"))
		rb, _ := tx.Bolt.CreateBucket([]byte("mail_raw"))
		for _, name := range []string{"mail_due", "mail_state", "mail_ref", "mail_to", "mail_fail"} {
			if _, err := tx.Bolt.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		mb.SetSequence(7)
		mb.Put(id(6), []byte(`{"id":6,"to":"sent@example.org","subject":"old sent","kind":"invite","ref":"invite:1","state":"sent","created":"`+at+`","next_attempt":"`+at+`","attempts":[{"at":"`+at+`","reply":"250 ok","ok":true}],"retry_from":"`+at+`"}`))
		rb.Put(id(6), []byte("secret body"))
		mb.Put(id(7), []byte(`{"id":7,"to":"old@example.org","subject":"old pending","kind":"invite","ref":"invite:2","state":"pending","created":"`+at+`","next_attempt":"`+at+`","attempts":[],"retry_from":"`+at+`"}`))
		return rb.Put(id(7), []byte(raw))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	e := newEnv(t, dir, srv, nil)
	defer closeDB(t, e.db)
	sent, err := e.q.Get(6)
	if err != nil || sent.State != mailer.Sent || sent.Raw != nil || len(sent.Attempts) != 1 || sent.To != "sent@example.org" {
		t.Fatalf("converted sent mail: %+v %v", sent, err)
	}
	if l, _ := e.q.List(mailer.Filter{Ref: "invite:2"}); len(l) != 1 || l[0].ID != 7 || l[0].MessageID != "<m7@id.example.org>" {
		t.Fatalf("converted pending mail by ref: %+v", l)
	}
	e.run()
	e.waitState(7, mailer.Sent)
	if msgs := srv.Messages(); len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "old pending") {
		t.Fatalf("server got %d messages", len(msgs))
	}
	if n := e.enqueue(msg("new@example.org", "new")); n != 8 {
		t.Fatalf("new mail got id %d, want 8", n)
	}
	e.db.View(func(tx *store.Tx) error {
		if tx.Bolt.Bucket([]byte("mail_raw")) != nil || tx.Bolt.Bucket([]byte("mail")) != nil {
			t.Error("old buckets left behind")
		}
		return nil
	})
}
