package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// CleanName is the marker a clean Close leaves in data_dir next to
// herald.db. It records the file as Herald left it: size, modification and
// change times, inode, and a checksum of the two meta pages. Open removes it
// (durably) before anything can write the file, so it exists only while no
// Herald has the file open for writing and only after a clean shutdown.
//
// When the marker matches the file, Open runs the cheap checks (meta pages,
// size against the meta page) but skips the page walk and bbolt's
// consistency check, which read every page (seconds at a few GB). Anything
// that wrote the file since (a crash, a truncate, a page overwritten, a
// restore from a backup, a copy) changes its change time (ctime, which no
// system call can set back) or inode, and the full checks run again.
const CleanName = "herald.db.clean"

// cleanMarker is the JSON in CleanName.
type cleanMarker struct {
	Version int    `json:"version"`
	Size    int64  `json:"size"`
	Mtime   int64  `json:"mtime_ns"`
	Ctime   int64  `json:"ctime_ns"`
	Inode   uint64 `json:"inode"`
	Device  uint64 `json:"device"`
	Meta    string `json:"meta_sha256"` // of the first two pages
}

const cleanMarkerVersion = 1

// fileMarker describes the file at path as it is now.
func fileMarker(path string) (cleanMarker, error) {
	f, err := os.Open(path)
	if err != nil {
		return cleanMarker{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return cleanMarker{}, err
	}
	m := cleanMarker{Version: cleanMarkerVersion, Size: st.Size(), Mtime: st.ModTime().UnixNano()}
	var ok bool
	if m.Ctime, m.Inode, m.Device, ok = statIDs(st); !ok {
		return cleanMarker{}, errors.New("no change time or inode on this platform")
	}
	first := make([]byte, pageHeaderSize+metaSize)
	if _, err := io.ReadFull(f, first); err != nil {
		return cleanMarker{}, err
	}
	meta, err := parseMeta(first)
	if err != nil {
		return cleanMarker{}, err
	}
	pages := make([]byte, 2*int64(meta.pageSize))
	if _, err := f.ReadAt(pages, 0); err != nil {
		return cleanMarker{}, err
	}
	sum := sha256.Sum256(pages)
	m.Meta = hex.EncodeToString(sum[:])
	return m, nil
}

// takeCleanMarker reports whether data_dir holds a marker matching the
// file at path, and removes the marker (syncing the directory) whatever it
// held: from here on the file may be written, and a crash must leave no
// marker behind.
func takeCleanMarker(dataDir, path string) (clean bool, err error) {
	name := filepath.Join(dataDir, CleanName)
	raw, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	var want cleanMarker
	if json.Unmarshal(raw, &want) == nil && want.Version == cleanMarkerVersion {
		if got, err := fileMarker(path); err == nil && got == want {
			clean = true
		}
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("remove %s: %w", name, err)
	}
	return clean, syncDir(dataDir)
}

// Close closes db. When clean is true (the caller saw no sign of damage
// while it ran: no recovered panic) it then records the file in the
// marker, so the next Open skips the full consistency check. A failure to
// write the marker only costs the next start that check.
func Close(db *bolt.DB, clean bool) error {
	path := db.Path()
	readOnly := db.IsReadOnly()
	if err := db.Close(); err != nil {
		return err
	}
	if !clean || readOnly || path == "" { // "": closed before, by someone else
		return nil
	}
	return writeCleanMarker(path)
}

func writeCleanMarker(path string) error {
	m, err := fileMarker(path)
	if err != nil {
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-clean-")
	if err != nil {
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, CleanName)); err != nil {
		return fmt.Errorf("clean shutdown marker: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
