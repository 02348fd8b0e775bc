package invites_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/store"
)

// BenchmarkStoredInviteSize: the database bytes per stored invite once its
// email was sent, its share of every bucket included (invite, indexes,
// ephemeral key, the mail's record with its attempts), and the outbox's part
// alone. Bytes are those the pages hold in use: freed pages, which bbolt
// reuses, are not counted.
//
//   - mail=sent: after the SMTP server accepted every mail (body removed);
//   - mail=queued: the SMTP server never answers, every mail waits with its
//     compressed body.
func BenchmarkStoredInviteSize(b *testing.B) {
	b.Run("mail=sent", func(b *testing.B) { benchInviteSize(b, true) })
	b.Run("mail=queued", func(b *testing.B) { benchInviteSize(b, false) })
}

func benchInviteSize(b *testing.B, send bool) {
	var e *env
	if send {
		e = start(b)
	} else {
		stall := stalledSMTP(b)
		e = start(b, func(c *config.Config) {
			c.SMTP.Host, c.SMTP.Port, c.SMTP.Timeout = stall.Host, stall.Port, config.Duration(time.Minute)
		})
		b.Cleanup(stall.Close) // before testenv's cleanup: let the worker go
	}
	tok := e.register(b, alice)
	before := bucketBytes(b, e.App.DB())
	b.ResetTimer()
	for i := range b.N {
		e.storeInvite(b, tok, inviteBody(alice, fmt.Sprintf("size%d@example.org", i)))
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if s, _ := e.App.Mailer().Stats(); send && s.Sent >= b.N || !send && s.Pending >= b.N {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("mail not sent")
		}
	}
	b.StopTimer()
	after := bucketBytes(b, e.App.DB())
	all, outbox := 0, 0
	for name, n := range after {
		d := n - before[name]
		all += d
		if strings.HasPrefix(name, "outbox") {
			outbox += d
		}
	}
	b.ReportMetric(float64(all)/float64(b.N), "B/invite")
	b.ReportMetric(float64(outbox)/float64(b.N), "B/mail")
}

func bucketBytes(b testing.TB, db *store.DB) map[string]int {
	out := map[string]int{}
	err := db.View(func(tx *store.Tx) error {
		return tx.Bolt.ForEach(func(name []byte, bk *bolt.Bucket) error {
			s := bk.Stats()
			out[string(name)] = s.LeafInuse + s.BranchInuse + s.InlineBucketInuse
			return nil
		})
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}
