package mailer

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/queue"
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
	n := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		old, raw := tx.Bucket([]byte("mail")), tx.Bucket([]byte("mail_raw"))
		if old == nil || raw == nil {
			return nil
		}
		err := old.ForEach(func(k, v []byte) error {
			var m legacyMail
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("mailer: converting the old outbox: mail %x: %w", k, err)
			}
			md, err := json.Marshal(meta{To: m.To, Subject: m.Subject, Ref: m.Ref, MessageID: rawHeader(raw.Get(k), "Message-ID")})
			if err != nil {
				return err
			}
			r := &queue.Record{ID: m.ID, Kind: m.Kind, State: queue.State(m.State), Created: m.Created, NextAttempt: m.NextAttempt,
				RetryFrom: m.RetryFrom, RetryBase: m.RetryBase, Attempts: m.Attempts, Meta: md}
			switch m.State {
			case Sent:
				r.State, r.Finished = queue.Done, m.Created
				if a := r.LastAttempt(); a != nil {
					r.Finished = a.At
				}
			case Failed:
				r.Finished = m.Created
				if a := r.LastAttempt(); a != nil {
					r.Finished, r.LastError = a.At, a.Reply
				}
				fallthrough
			default:
				if r.Data, err = pack(raw.Get(k)); err != nil {
					return err
				}
			}
			if err := q.be.Import(tx, r); err != nil {
				return err
			}
			if m.Ref != "" {
				if err := tx.Bucket(bktRef).Put(idxKey(m.Ref, m.ID), nil); err != nil {
					return err
				}
			}
			n++
			return tx.Bucket(bktTo).Put(idxKey(strings.ToLower(m.To), m.ID), nil)
		})
		if err != nil {
			return err
		}
		if err := tx.Bucket([]byte("outbox")).SetSequence(max(tx.Bucket([]byte("outbox")).Sequence(), old.Sequence())); err != nil {
			return err
		}
		for _, name := range legacyBuckets {
			if tx.Bucket([]byte(name)) != nil {
				if err := tx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err == nil && n > 0 {
		q.log.Info("converted the outbox to the queue layout", "mails", n)
	}
	return err
}
