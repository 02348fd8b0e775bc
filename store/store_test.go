package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestOpenRecordsSchemaVersion(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := Version(db); err != nil || v != SchemaVersion {
		t.Fatalf("Version = %d, %v", v, err)
	}
	if err := Buckets(db, []byte("a"), []byte("b")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if st, err := os.Stat(filepath.Join(dir, FileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("db file mode: %v %v", st.Mode(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("data_dir mode: %v", err)
	}
	// Reopening keeps data and version.
	db, err = Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("a")) == nil {
			t.Error("bucket lost")
		}
		return nil
	})
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put([]byte("schema_version"), U64(SchemaVersion+1))
	})
	db.Close()
	if _, err := Open(dir, time.Second); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(dir, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

func TestKeys(t *testing.T) {
	a := TimeKey(time.Unix(1, 0), []byte("x"))
	b := TimeKey(time.Unix(2, 0), nil)
	if string(a) >= string(b) || len(a) != 9 {
		t.Error("TimeKey does not sort by time")
	}
	if string(U64(255)) >= string(U64(256)) {
		t.Error("U64 does not sort numerically")
	}
	src := []byte("abc")
	c := Copy(src)
	src[0] = 'z'
	if string(c) != "abc" || Copy(nil) != nil {
		t.Error("Copy")
	}
}

func TestDescending(t *testing.T) {
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
			append([]byte("a\x00"), U64(1)...),
			append([]byte("b\x00"), U64(2)...),
			append([]byte("b\x00"), U64(300)...),
			append([]byte("b\x00"), U64(1<<64-1)...),
			[]byte("b\x00short"), // another length: skipped
			append([]byte("c\x00"), U64(3)...),
		} {
			if err := b.Put(k, nil); err != nil {
				return err
			}
		}
		ids := func(prefix []byte, most int) []uint64 {
			var out []uint64
			for id := range Descending(b, prefix) {
				out = append(out, id)
				if len(out) == most {
					break
				}
			}
			return out
		}
		if got := ids([]byte("b\x00"), 10); len(got) != 3 || got[0] != 1<<64-1 || got[1] != 300 || got[2] != 2 {
			t.Errorf("b: %v", got)
		}
		if got := ids([]byte("b\x00"), 1); len(got) != 1 || got[0] != 1<<64-1 {
			t.Errorf("b, stopped after one: %v", got)
		}
		if got := ids([]byte("c\x00"), 10); len(got) != 1 || got[0] != 3 {
			t.Errorf("c (the last prefix): %v", got)
		}
		if got := ids([]byte("z\x00"), 10); len(got) != 0 {
			t.Errorf("z: %v", got)
		}
		before := func(prefix []byte, id uint64) []uint64 {
			var out []uint64
			for id := range DescendingBefore(b, prefix, id) {
				out = append(out, id)
			}
			return out
		}
		if got := before([]byte("b\x00"), 300); len(got) != 1 || got[0] != 2 {
			t.Errorf("b below 300: %v", got)
		}
		if got := before([]byte("b\x00"), 299); len(got) != 1 || got[0] != 2 {
			t.Errorf("b below 299: %v", got)
		}
		if got := before([]byte("b\x00"), 2); len(got) != 0 {
			t.Errorf("b below 2: %v", got)
		}
		if got := before([]byte("c\x00"), 1000); len(got) != 1 || got[0] != 3 {
			t.Errorf("c below 1000 (past the last key): %v", got)
		}
		if got := before([]byte("b\x00"), 0); len(got) != 3 {
			t.Errorf("b, no bound: %v", got)
		}
		ib, err := tx.CreateBucket([]byte("byid"))
		if err != nil {
			return err
		}
		for _, id := range []uint64{5, 1, 9} {
			if err := ib.Put(U64(id), nil); err != nil {
				return err
			}
		}
		var all []uint64
		for id := range Descending(ib, nil) {
			all = append(all, id)
		}
		if len(all) != 3 || all[0] != 9 || all[1] != 5 || all[2] != 1 {
			t.Errorf("by ID: %v", all)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
