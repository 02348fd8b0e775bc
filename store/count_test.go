package store

import (
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestCountPrefix(t *testing.T) {
	db, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("idx"))
		if err != nil {
			return err
		}
		for _, k := range [][]byte{
			append([]byte("pending\x00"), U64(7)...),
			append([]byte("pending\x00"), U64(3)...),
			append([]byte("pending\x00"), U64(300)...),
			[]byte("pending\x00short"),                // not prefix+ID: skipped
			append([]byte("pending\x00x"), U64(1)...), // longer: skipped
			append([]byte("pendingx\x00"), U64(1)...), // another prefix
			append([]byte("sent\x00"), U64(1)...),
		} {
			if err := b.Put(k, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("idx"))
		if n, first := CountPrefix(b, []byte("pending\x00")); n != 3 || first != 3 {
			t.Errorf("pending: %d, first %d; want 3, first 3", n, first)
		}
		if n, first := CountPrefix(b, []byte("failed\x00")); n != 0 || first != 0 {
			t.Errorf("failed: %d, first %d", n, first)
		}
		return nil
	})
}
