package queue

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A record round-trips through the compact format: equal times left out,
// others kept to the nanosecond, attempts with their detail, the owner's meta.
func TestCompactRecordRoundTrips(t *testing.T) {
	at := time.Date(2026, 11, 29, 21, 51, 16, 987437650, time.UTC)
	for _, r := range []Record{
		{ID: 7, Kind: "invite", State: Pending, Created: at, NextAttempt: at, RetryFrom: at, Attempts: []Attempt{},
			Meta: json.RawMessage(`{"to":"a@example.org"}`)},
		{ID: 8, State: Failed, Created: at, NextAttempt: at.Add(time.Minute), RetryFrom: at.Add(time.Hour), RetryBase: 3,
			Finished: at.Add(2 * time.Hour), LastError: "550 no",
			Attempts: []Attempt{{At: at.Add(time.Second), Temporary: true, Reply: "451 later", Detail: json.RawMessage(`{"status":451}`)},
				{At: at.Add(2 * time.Hour), OK: false, Reply: "550 no"}}},
		{ID: 9, State: Done, Created: at, NextAttempt: at, RetryFrom: at, Finished: at.Add(time.Millisecond),
			Attempts: []Attempt{{At: at.Add(time.Millisecond), OK: true, Reply: "250 2.0.0 OK"}}},
	} {
		v, err := encodeRecord(&r)
		if err != nil {
			t.Fatal(err)
		}
		var got Record
		if err := decodeRecord(r.ID, v, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("record %d:\n got %+v\nwant %+v", r.ID, got, r)
		}
		old, _ := json.Marshal(r)
		if len(v) >= len(old) {
			t.Fatalf("record %d: compact %d bytes, JSON %d", r.ID, len(v), len(old))
		}
	}
}

// Records stored as the Record's JSON, before the compact format, are read
// as they were, and written back compact.
func TestBoltReadsRecordsOfTheOlderFormat(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "q.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b, err := OpenBolt(db, "q")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 29, 21, 0, 0, 0, time.UTC)
	want := Record{ID: 1, Kind: "k", State: Pending, Created: at, NextAttempt: at.Add(time.Minute), RetryFrom: at,
		Attempts: []Attempt{{At: at, Temporary: true, Reply: "451"}}, Meta: json.RawMessage(`{"x":1}`)}
	old, _ := json.Marshal(want)
	err = db.Update(func(tx *bolt.Tx) error {
		if err := b.Import(tx, &Record{ID: 1, State: Pending, Created: at, NextAttempt: at, RetryFrom: at}); err != nil {
			return err
		}
		return tx.Bucket([]byte("q")).Put([]byte{0, 0, 0, 0, 0, 0, 0, 1}, old)
	})
	if err != nil {
		t.Fatal(err)
	}
	var got *Record
	db.View(func(tx *bolt.Tx) error { got, err = ReadBolt(tx, "q", 1); return err })
	if err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("older record: %+v %v\nwant %+v", got, err, want)
	}
	db.Update(func(tx *bolt.Tx) error { return b.put(tx, got) })
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("q")).Get([]byte{0, 0, 0, 0, 0, 0, 0, 1}); v[0] != formatCompact {
			t.Errorf("rewritten record starts with %q", v[0])
		}
		got, err = ReadBolt(tx, "q", 1)
		return nil
	})
	if err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("rewritten record: %+v %v", got, err)
	}
}
