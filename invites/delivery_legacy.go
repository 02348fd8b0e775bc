package invites

import (
	"encoding/json"

	"github.com/herald-im/herald/queue"
	"github.com/herald-im/herald/store"
)

// The deliveries before the queue package kept their own buckets.
// convertLegacy moves every delivery into the onbind queue with its id,
// history and state, and deletes the old buckets, in one transaction at
// OpenDeliveries: a delivery pending at the upgrade is attempted after it.
var legacyDeliveryBuckets = []string{"invites_deliveries", "invites_delivery_due", "invites_delivery_state", "invites_delivery_invite"}

// It is bbolt-only by nature: those buckets only ever existed in bbolt data
// dirs.
func (d *Deliveries) convertLegacy() error {
	be, ok := d.be.(*queue.Bolt)
	if !ok {
		return nil
	}
	n, err := be.Convert("invites_deliveries", legacyDeliveryBuckets, func(_ *store.Tx, v []byte) (*queue.Record, error) {
		var dl Delivery
		if err := json.Unmarshal(v, &dl); err != nil {
			return nil, err
		}
		md, err := json.Marshal(deliveryMeta{Server: dl.Server, Medium: dl.Medium, Address: dl.Address, MXID: dl.MXID, InviteIDs: dl.InviteIDs})
		if err != nil {
			return nil, err
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
				return nil, err
			}
			r.Attempts = append(r.Attempts, queue.Attempt{At: a.At, OK: a.OK, Temporary: a.Retryable, Reply: a.Reply, Detail: det})
		}
		return r, nil
	}, d.index)
	if err == nil && n > 0 {
		d.log.Info("converted the onbind deliveries to the queue layout", "deliveries", n)
	}
	return err
}
