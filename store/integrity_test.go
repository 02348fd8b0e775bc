package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// filled makes a data dir whose herald.db holds n records of 200 bytes in
// bucket "data" (so the bucket has pages of its own), and returns the dir
// and the page id of the bucket's root page.
func filled(t testing.TB, n int) (dir string, root uint64, pageSize int) {
	t.Helper()
	dir = t.TempDir()
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 1000 {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("data"))
			if err != nil {
				return err
			}
			for j := i; j < min(i+1000, n); j++ {
				if err := b.Put(U64(uint64(j)), bytes.Repeat([]byte{'v'}, 200)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket([]byte("data")).Root())
		return nil
	})
	pageSize = db.Info().PageSize
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if root == 0 {
		t.Fatal("bucket is inline: no page to damage")
	}
	return dir, root, pageSize
}

func expectDamaged(t *testing.T, err error, want string) {
	t.Helper()
	var de *DamagedError
	if !errors.Is(err, ErrDamaged) || !errors.As(err, &de) {
		t.Fatalf("got %v, want a DamagedError", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, want) || strings.Contains(msg, "\n") || !strings.Contains(msg, "restore") || !strings.Contains(msg, "herald check") {
		t.Fatalf("error %q: want one line naming %q and how to restore", msg, want)
	}
}

// A herald.db cut short (truncate -s to below its size) made bolt.Open die
// with "fatal error: fault" (SIGBUS on the mapped pages past the end).
func TestOpenRefusesTruncatedFile(t *testing.T) {
	dir, _, _ := filled(t, 5000)
	path := filepath.Join(dir, FileName)
	st, _ := os.Stat(path)
	if err := os.Truncate(path, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, time.Second)
	expectDamaged(t, err, "truncated")

	rep, err := CheckFile(path, nil)
	if err != nil || rep.Total != 1 || !strings.Contains(rep.Problems[0], "truncated") {
		t.Fatalf("CheckFile: %+v %v", rep, err)
	}
}

// A page overwritten in the middle of the file let Open succeed, and a
// later read of that bucket panicked (in a background worker: a crash loop).
func TestOpenRefusesOverwrittenPage(t *testing.T) {
	dir, root, pageSize := filled(t, 5000)
	path := filepath.Join(dir, FileName)
	overwrite(t, path, int64(root)*int64(pageSize), pageSize)
	_, err := Open(dir, time.Second)
	expectDamaged(t, err, fmt.Sprint(root))

	rep, err := CheckFile(path, nil)
	if err != nil || rep.Total == 0 || len(rep.Problems) == 0 {
		t.Fatalf("CheckFile: %+v %v", rep, err)
	}
	t.Logf("problems: %q", rep.Problems)
}

func overwrite(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, n), off); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesBrokenMetaPages(t *testing.T) {
	dir, _, pageSize := filled(t, 10)
	path := filepath.Join(dir, FileName)
	overwrite(t, path, 0, 2*pageSize)
	_, err := Open(dir, time.Second)
	expectDamaged(t, err, "meta page")

	// Shorter than one page.
	if err := os.Truncate(path, 100); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, time.Second)
	expectDamaged(t, err, "shorter than one page")
}

// Growing the file (truncate -s to above its size) adds zero pages past
// the high-water mark: harmless, the data is intact.
func TestOpenAcceptsGrownFile(t *testing.T) {
	dir, _, _ := filled(t, 100)
	path := filepath.Join(dir, FileName)
	if err := os.Truncate(path, 50_000_000); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := Usable(db); err != nil {
		t.Fatal(err)
	}
}

func TestCheckFileOnAHealthyAndAnEmptyFile(t *testing.T) {
	dir, _, _ := filled(t, 100)
	path := filepath.Join(dir, FileName)
	rep, err := CheckFile(path, nil)
	if err != nil || rep.Total != 0 {
		t.Fatalf("healthy file: %+v %v", rep, err)
	}
	// CheckFile changes nothing: the file is byte for byte the same.
	before, _ := os.ReadFile(path)
	if _, err := CheckFile(path, nil); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("CheckFile changed the file")
	}
	// A running Herald holds the lock: CheckFile says so instead of waiting.
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CheckFile(path, &bolt.Options{Timeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("locked file: %v", err)
	}
	db.Close()

	empty := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(empty, nil, 0o600)
	if rep, err := CheckFile(empty, nil); err != nil || rep.Total != 1 {
		t.Fatalf("empty file: %+v %v", rep, err)
	}
}

// BenchmarkOpen measures start-up's consistency check on a database of
// 100 000 records of 200 bytes (about 30 MB).
func BenchmarkOpen(b *testing.B) {
	dir, _, _ := filled(b, 100_000)
	st, _ := os.Stat(filepath.Join(dir, FileName))
	for b.Loop() {
		db, err := Open(dir, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		db.Close()
	}
	b.ReportMetric(float64(st.Size())/1e6, "MB")
}

func TestIssuedKeysRecord(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if keys, kept, err := IssuedKeys(db); err != nil || !kept || len(keys) != 0 {
		t.Fatalf("new database: %v %v %v", keys, kept, err)
	}
	if err := RecordKeys(db, "ed25519:b", "ed25519:a"); err != nil {
		t.Fatal(err)
	}
	if err := RecordKeys(db, "ed25519:a"); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := MarkKeysLost(db, "ed25519:b"); err != nil {
		t.Fatal(err)
	}
	keys, _, _ := IssuedKeys(db)
	if len(keys) != 2 || keys[0].ID != "ed25519:a" || !keys[0].Lost.IsZero() || keys[1].Lost.IsZero() || keys[1].Recorded.IsZero() {
		t.Fatalf("record: %+v", keys)
	}
	// A lost key present again is expected again.
	RecordKeys(db, "ed25519:b")
	if keys, _, _ := IssuedKeys(db); !keys[1].Lost.IsZero() {
		t.Fatalf("record: %+v", keys)
	}
	// A database from before the record (Herald 0.1) has no bucket.
	db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(issuedBucket) })
	if _, kept, err := IssuedKeys(db); err != nil || kept {
		t.Fatalf("0.1 database: kept %v %v", kept, err)
	}
}

// A branch page with an intact header whose child pointer leads past the
// end of the file: bbolt's consistency check followed it through the mmap
// on a goroutine of its own and the process died (SIGSEGV, fatal error:
// fault). The page walk before mapping reads through ReadAt and refuses it.
func TestOpenRefusesAPointerOutOfTheFile(t *testing.T) {
	dir, root, pageSize := filled(t, 5000)
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 16)
	f.ReadAt(hdr, int64(root)*int64(pageSize))
	if flags := binary.LittleEndian.Uint16(hdr[8:]); flags != branchPageFlag {
		t.Fatalf("bucket root page %d has flags %#x, want a branch page", root, flags)
	}
	// The first branch element's child page id, at header + 8.
	child := make([]byte, 8)
	binary.LittleEndian.PutUint64(child, 1<<30)
	if _, err := f.WriteAt(child, int64(root)*int64(pageSize)+16+8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = Open(dir, time.Second)
	expectDamaged(t, err, "outside the file")
	if rep, err := CheckFile(path, nil); err != nil || rep.Total != 1 || !strings.Contains(rep.Problems[0], "outside the file") {
		t.Fatalf("CheckFile: %+v %v", rep, err)
	}
}
