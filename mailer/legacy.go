package mailer

import (
	"encoding/json"
	"time"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The outbox before the queue package: its own buckets, the composed
// message kept whole in mail_raw. convertLegacy moves every mail into the
// outbox queue with its id (invites refer to it), history and state, and
// deletes the old buckets, in one transaction at Open: pending mail is sent
// after an upgrade, and a sent mail keeps its timeline, not its body.
var legacyBuckets = []string{"mail", "mail_raw", "mail_due", "mail_state", "mail_ref", "mail_to", "mail_fail"}

type legacyMail struct {
	ID          uint64    `json:"id"`
	To          string    `json:"to"`
	Subject     string    `json:"subject"`
	Kind        string    `json:"kind,omitempty"`
	Ref         string    `json:"ref,omitempty"`
	State       State     `json:"state"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt"`
	Attempts    []Attempt `json:"attempts"`
	RetryFrom   time.Time `json:"retry_from"`
	RetryBase   int       `json:"retry_base,omitempty"`
}

func (q *Queue) convertLegacy() error {
	if q.bolt == nil {
		return nil // the old buckets exist only in bbolt files
	}
	n, err := q.bolt.Convert("mail", legacyBuckets, func(tx *store.Tx, v []byte) (*queue.Record, error) {
		var m legacyMail
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, err
		}
		raw := tx.Bolt.Bucket([]byte("mail_raw")).Get(store.U64(m.ID))
		md, err := encodeMeta(meta{To: m.To, Subject: m.Subject, Ref: m.Ref, MessageID: rawHeader(raw, "Message-ID")})
		if err != nil {
			return nil, err
		}
		r := &queue.Record{ID: m.ID, Kind: m.Kind, State: queue.State(m.State), Created: m.Created, NextAttempt: m.NextAttempt,
			RetryFrom: m.RetryFrom, RetryBase: m.RetryBase, Attempts: m.Attempts, Meta: md}
		if m.State == Sent {
			r.State = queue.Done
		} else if r.Data, err = pack(raw); err != nil {
			return nil, err
		}
		if r.State != queue.Pending {
			r.Finished = m.Created
			if a := r.LastAttempt(); a != nil {
				r.Finished = a.At
				if !a.OK {
					r.LastError = a.Reply
				}
			}
		}
		return r, nil
	}, q.index)
	if err == nil && n > 0 {
		q.log.Info("converted the outbox to the queue layout", "mails", n)
	}
	return err
}
