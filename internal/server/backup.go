package server

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/herald-im/herald/internal/control"
	"github.com/herald-im/herald/store"
)

// BackupInfo describes a finished backup.
type BackupInfo struct {
	Dir      string
	DBBytes  int64    // size of the database snapshot
	Files    int      // other files copied (keys, TLS material, ...)
	KeyIDs   []string // signing keys in the copy
	Schema   uint64   // the snapshot's schema version
	Duration time.Duration
}

// Backup writes a consistent copy of data_dir into dir, which must be empty
// or not exist yet: the database as one read transaction sees it (writers
// go on meanwhile), and, while that transaction is open, every other file
// of data_dir (signing keys, self-signed TLS material, the dev mailbox,
// pending admin hand-overs). Keys only change through the commands, which
// the control socket runs one at a time, so the keys match the database.
// `herald serve` with data_dir set to dir starts from the copy.
func (a *App) Backup(dir string) (BackupInfo, error) {
	start := time.Now()
	info := BackupInfo{}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return info, err
	}
	info.Dir = dir
	src, err := filepath.Abs(a.cfg.DataDir)
	if err != nil {
		return info, err
	}
	if dir == src || strings.HasPrefix(dir, src+string(filepath.Separator)) {
		return info, fmt.Errorf("backup: %s is inside data_dir %s; back up to another directory", dir, src)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	if len(entries) > 0 {
		return info, fmt.Errorf("backup: %s is not empty; give a new or empty directory", dir)
	}
	err = a.db.View(func(tx *bolt.Tx) error {
		tmp := filepath.Join(dir, ".tmp-"+store.FileName)
		if err := tx.CopyFile(tmp, 0o600); err != nil {
			return fmt.Errorf("backup: database snapshot: %w", err)
		}
		if err := syncFile(tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, store.FileName)); err != nil {
			return err
		}
		info.DBBytes = tx.Size()
		return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(src, path)
			if err != nil || rel == "." {
				return err
			}
			if skipInBackup(rel, d) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			target := filepath.Join(dir, rel)
			st, err := d.Info()
			if err != nil {
				return err
			}
			if d.IsDir() {
				return os.MkdirAll(target, st.Mode().Perm()|0o700)
			}
			info.Files++
			return copyFile(path, target, st.Mode().Perm())
		})
	})
	if err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	if err := syncTree(dir); err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	// Check the copy opens and holds the schema version, as serve would read it.
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return info, fmt.Errorf("backup: the copy does not open: %w", err)
	}
	info.Schema, err = store.Version(db)
	db.Close()
	if err != nil {
		return info, fmt.Errorf("backup: the copy: %w", err)
	}
	for _, k := range a.ring.List() {
		info.KeyIDs = append(info.KeyIDs, k.ID)
	}
	info.Duration = time.Since(start)
	return info, nil
}

// skipInBackup: the live database file (copied through the transaction),
// the control socket, temporary files and anything not a regular file or
// directory.
func skipInBackup(rel string, d fs.DirEntry) bool {
	name := d.Name()
	switch {
	case rel == store.FileName, rel == control.SocketName, strings.HasPrefix(name, ".tmp-"):
		return true
	case d.IsDir():
		return false
	}
	return !d.Type().IsRegular()
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncTree fsyncs every directory under dir, so the copied names survive a
// crash right after the backup reports success.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
			return err
		}
		return nil
	})
}
