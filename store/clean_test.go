package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// cleanlyClosed is filled, then opened through Open and closed cleanly, so
// data_dir holds the clean shutdown marker.
func cleanlyClosed(t *testing.T) (dir, path string, root uint64, pageSize int) {
	t.Helper()
	dir, root, pageSize = filled(t, 5000)
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := Close(db, true); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, FileName)
	if _, err := os.Stat(filepath.Join(dir, CleanName)); err != nil {
		t.Fatalf("clean Close left no marker: %v", err)
	}
	return dir, path, root, pageSize
}

func markerExists(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, CleanName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// Open trusts a matching marker: it skips the page walk and the
// consistency check. Shown by a marker written for a file already damaged
// (which a real clean Close never does): Open then accepts the file.
func TestOpenTrustsAMatchingCleanMarker(t *testing.T) {
	dir, root, pageSize := filled(t, 5000)
	path := filepath.Join(dir, FileName)
	overwrite(t, path, int64(root)*int64(pageSize), pageSize)
	if err := writeCleanMarker(path); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatalf("a matching marker must skip the full check: %v", err)
	}
	if markerExists(t, dir) {
		t.Fatal("Open must remove the marker before anything writes")
	}
	db.Close()
	// Without the marker (the last run did not close cleanly) the full
	// check runs again and refuses the file.
	_, err = Open(dir, time.Second)
	expectDamaged(t, err, "damaged")
}

// Damage done while Herald was stopped, after a clean shutdown, is still
// refused with the same one line: the file no longer matches the marker.
func TestCleanMarkerDoesNotHideDamageDoneWhileStopped(t *testing.T) {
	t.Run("page overwritten", func(t *testing.T) {
		dir, path, root, pageSize := cleanlyClosed(t)
		overwrite(t, path, int64(root)*int64(pageSize), pageSize)
		_, err := Open(dir, time.Second)
		expectDamaged(t, err, "damaged")
	})
	t.Run("page overwritten, modification time set back", func(t *testing.T) {
		dir, path, root, pageSize := cleanlyClosed(t)
		st, _ := os.Stat(path)
		overwrite(t, path, int64(root)*int64(pageSize), pageSize)
		if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, time.Second)
		expectDamaged(t, err, "damaged")
	})
	t.Run("truncated", func(t *testing.T) {
		dir, path, _, _ := cleanlyClosed(t)
		st, _ := os.Stat(path)
		if err := os.Truncate(path, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, time.Second)
		expectDamaged(t, err, "truncated")
	})
	t.Run("meta pages", func(t *testing.T) {
		dir, path, _, pageSize := cleanlyClosed(t)
		overwrite(t, path, 0, 2*pageSize)
		_, err := Open(dir, time.Second)
		expectDamaged(t, err, "meta page")
	})
	t.Run("replaced by a copy", func(t *testing.T) {
		dir, path, root, pageSize := cleanlyClosed(t)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		copy(raw[int64(root)*int64(pageSize):], make([]byte, pageSize))
		st, _ := os.Stat(path)
		tmp := path + ".new"
		if err := os.WriteFile(tmp, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(tmp, st.ModTime(), st.ModTime())
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		_, err = Open(dir, time.Second)
		expectDamaged(t, err, "damaged")
	})
}

// Close without clean (the run saw a panic) and a run that never closes
// (a crash) leave no marker: the next start checks everything.
func TestOnlyACleanCloseLeavesTheMarker(t *testing.T) {
	dir, _, _, _ := cleanlyClosed(t)
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if markerExists(t, dir) {
		t.Fatal("marker kept while the file is open for writing")
	}
	if err := Close(db, false); err != nil {
		t.Fatal(err)
	}
	if markerExists(t, dir) {
		t.Fatal("Close(db, false) left a marker")
	}
	// A clean close after writes: the marker matches the file as left, and
	// the next Open accepts it.
	db, _ = Open(dir, time.Second)
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(metaBucket).Put([]byte("x"), []byte("y")) }); err != nil {
		t.Fatal(err)
	}
	if err := Close(db, true); err != nil {
		t.Fatal(err)
	}
	want, err := fileMarker(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	clean, err := takeCleanMarker(dir, filepath.Join(dir, FileName))
	if err != nil || !clean {
		t.Fatalf("marker after a clean close does not match %+v: %v %v", want, clean, err)
	}
}

// BenchmarkOpenClean is BenchmarkOpen after a clean shutdown: the cheap
// checks only.
func BenchmarkOpenClean(b *testing.B) {
	dir, _, _ := filled(b, 100_000)
	for b.Loop() {
		db, err := Open(dir, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := Close(db, true); err != nil {
			b.Fatal(err)
		}
	}
}

// A second Open while a Herald writes the file says the database is in use.
// Its checks used to read the file unlocked, mid-write, and could call the
// healthy file damaged (seen with a page the writer was reusing).
func TestOpenWhileAnotherWritesSaysInUse(t *testing.T) {
	dir, _, _ := filled(t, 50_000)
	db, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("data"))
				for j := range 2000 {
					b.Put(U64(uint64((i*7919+j*31)%50_000)), bytes.Repeat([]byte{byte(i)}, 100+(i+j)%400))
				}
				return nil
			})
		}
	}()
	for range 20 {
		_, err := Open(dir, 10*time.Millisecond)
		if !errors.Is(err, ErrLocked) {
			close(stop)
			<-done
			t.Fatalf("Open while another writes: %v, want ErrLocked", err)
		}
	}
	close(stop)
	<-done
}
