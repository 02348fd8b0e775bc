package invites

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The deliveries before the queue package kept their own buckets.
// convertLegacy moves every delivery into the onbind queue with its id,
// history and state, and deletes the old buckets, in one transaction at
// OpenDeliveries: a delivery pending at the upgrade is attempted after it.
var legacyDeliveryBuckets = []string{"invites_deliveries", "invites_delivery_due", "invites_delivery_state", "invites_delivery_invite"}

func (d *Deliveries) convertLegacy() error {
	n := 0
	err := d.db.Update(func(tx *bolt.Tx) error {
		old := tx.Bucket([]byte("invites_deliveries"))
		if old == nil {
			return nil
		}
		err := old.ForEach(func(k, v []byte) error {
			var dl Delivery
			if err := json.Unmarshal(v, &dl); err != nil {
				return fmt.Errorf("invites: converting the old deliveries: %x: %w", k, err)
			}
			md, err := json.Marshal(deliveryMeta{Server: dl.Server, Medium: dl.Medium, Address: dl.Address, MXID: dl.MXID, InviteIDs: dl.InviteIDs})
			if err != nil {
				return err
			}
			st := queue.State(dl.State)
			if dl.State == DeliveryDelivered {
				st = queue.Done
			}
			r := &queue.Record{ID: dl.ID, State: st, Created: dl.Created, NextAttempt: dl.NextAttempt, RetryFrom: dl.RetryFrom,
				RetryBase: dl.RetryBase, Finished: dl.Finished, LastError: dl.LastError, Meta: md}
			for _, a := range dl.Attempts {
				det, err := json.Marshal(attemptDetail{Method: a.Method, Status: a.Status, Invites: a.Invites})
				if err != nil {
					return err
				}
				r.Attempts = append(r.Attempts, queue.Attempt{At: a.At, OK: a.OK, Temporary: a.Retryable, Reply: a.Reply, Detail: det})
			}
			if err := d.be.Import(tx, r); err != nil {
				return err
			}
			for _, inv := range dl.InviteIDs {
				if err := tx.Bucket(bktDeliveryInvite).Put(append(store.U64(inv), store.U64(dl.ID)...), nil); err != nil {
					return err
				}
			}
			n++
			return tx.Bucket(bktDeliveryAddress).Put(addressKey(dl.Medium, dl.Address, dl.ID), nil)
		})
		if err != nil {
			return err
		}
		rec := tx.Bucket([]byte(deliveryQueue))
		if err := rec.SetSequence(max(rec.Sequence(), old.Sequence())); err != nil {
			return err
		}
		for _, name := range legacyDeliveryBuckets {
			if tx.Bucket([]byte(name)) != nil {
				if err := tx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err == nil && n > 0 {
		d.log.Info("converted the onbind deliveries to the queue layout", "deliveries", n)
	}
	return err
}
