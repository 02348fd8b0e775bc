package queue

import (
	"encoding/json"
	"time"
)

// How Bolt stores a Record (without its ID, which is the key, and its Data,
// which has its own bucket). Records written before this format are the
// Record's own JSON (they start with '{') and are still read.
//
// formatCompact is one byte, then a JSON document with one-letter keys and
// times as unix nanoseconds (0: the zero time); the next attempt and the
// start of the retry budget are left out when they equal the creation time,
// as they do for every record until its first failed attempt. A sent mail's
// record takes about 300 bytes instead of 500.
const formatCompact = 0x01

type compactRecord struct {
	Kind      string           `json:"k,omitempty"`
	State     State            `json:"s"`
	Created   int64            `json:"c"`
	Next      *int64           `json:"n,omitempty"` // nil: Created
	RetryFrom *int64           `json:"r,omitempty"` // nil: Created
	RetryBase int              `json:"b,omitempty"`
	Finished  int64            `json:"f,omitempty"`
	LastError string           `json:"e,omitempty"`
	Attempts  []compactAttempt `json:"a,omitempty"`
	Meta      json.RawMessage  `json:"m,omitempty"`
}

type compactAttempt struct {
	At        int64           `json:"t"`
	OK        bool            `json:"o,omitempty"`
	Temporary bool            `json:"p,omitempty"`
	Reply     string          `json:"r,omitempty"`
	Detail    json.RawMessage `json:"d,omitempty"`
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func encodeRecord(r *Record) ([]byte, error) {
	c := compactRecord{Kind: r.Kind, State: r.State, Created: nanos(r.Created), RetryBase: r.RetryBase,
		Finished: nanos(r.Finished), LastError: r.LastError, Meta: r.Meta}
	if n := nanos(r.NextAttempt); n != c.Created {
		c.Next = &n
	}
	if n := nanos(r.RetryFrom); n != c.Created {
		c.RetryFrom = &n
	}
	for _, a := range r.Attempts {
		c.Attempts = append(c.Attempts, compactAttempt{At: nanos(a.At), OK: a.OK, Temporary: a.Temporary, Reply: a.Reply, Detail: a.Detail})
	}
	v, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{formatCompact}, v...), nil
}

func decodeRecord(id uint64, v []byte, r *Record) error {
	if len(v) == 0 || v[0] != formatCompact {
		return json.Unmarshal(v, r) // the Record's own JSON, from before formatCompact
	}
	var c compactRecord
	if err := json.Unmarshal(v[1:], &c); err != nil {
		return err
	}
	*r = Record{ID: id, Kind: c.Kind, State: c.State, Created: fromNanos(c.Created), NextAttempt: fromNanos(c.Created),
		RetryFrom: fromNanos(c.Created), RetryBase: c.RetryBase, Finished: fromNanos(c.Finished), LastError: c.LastError,
		Attempts: make([]Attempt, 0, len(c.Attempts)), Meta: c.Meta}
	if c.Next != nil {
		r.NextAttempt = fromNanos(*c.Next)
	}
	if c.RetryFrom != nil {
		r.RetryFrom = fromNanos(*c.RetryFrom)
	}
	for _, a := range c.Attempts {
		r.Attempts = append(r.Attempts, Attempt{At: fromNanos(a.At), OK: a.OK, Temporary: a.Temporary, Reply: a.Reply, Detail: a.Detail})
	}
	return nil
}
