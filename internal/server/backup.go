package server

import (
	"archive/tar"
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
	"github.com/herald-im/herald/keys"
	"github.com/herald-im/herald/store"
)

// A backup travels as a tar stream: the running server writes it (through
// the control socket) and `herald backup` writes the files, as the user it
// runs as, wherever the operator says; the server itself never needs write
// access outside data_dir (the systemd unit's ProtectSystem=strict).

// errBackupPostgres is herald backup's answer on PostgreSQL.
var errBackupPostgres = fmt.Errorf("herald backup: %w: back up the database with PostgreSQL's tools (pg_dump, or base backups and WAL archiving), and data_dir's per-node files with any file backup; see docs/scaling.md", ErrBoltOnly)

// WriteBackup writes a consistent copy of data_dir to w as a tar stream:
// the database as one read transaction sees it (writers go on meanwhile),
// then, while that transaction is open, every other file of data_dir
// (signing keys, self-signed TLS material, the dev mailbox, pending admin
// hand-overs). Keys only change through the commands, which the control
// socket runs one at a time, so the keys match the database.
func (a *App) WriteBackup(w io.Writer) error {
	if a.bdb == nil {
		return errBackupPostgres
	}
	src, err := filepath.Abs(a.cfg.DataDir)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	err = a.db.View(func(tx *store.Tx) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: store.FileName, Mode: 0o600, Size: tx.Bolt.Size(), ModTime: time.Now()}); err != nil {
			return err
		}
		if _, err := tx.Bolt.WriteTo(tw); err != nil {
			return fmt.Errorf("database snapshot: %w", err)
		}
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
			st, err := d.Info()
			if err != nil {
				return err
			}
			hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: int64(st.Mode().Perm()), ModTime: st.ModTime()}
			if d.IsDir() {
				hdr.Typeflag = tar.TypeDir
				return tw.WriteHeader(hdr)
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			// The size of the open file, which the copy below sends whole.
			fst, err := f.Stat()
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, fst.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return tw.Close()
}

// skipInBackup: the live database file (copied through the transaction),
// the control socket, the clean-shutdown marker (it describes the live
// file, never a copy), temporary files and anything not a regular file or
// directory.
func skipInBackup(rel string, d fs.DirEntry) bool {
	name := d.Name()
	switch {
	case rel == store.FileName, rel == control.SocketName, rel == store.CleanName, strings.HasPrefix(name, ".tmp-"):
		return true
	case d.IsDir():
		return false
	}
	return !d.Type().IsRegular()
}

// BackupInfo describes a backup written to a directory.
type BackupInfo struct {
	Dir     string
	DBBytes int64    // size of the database snapshot
	Files   int      // other files (keys, TLS material, ...)
	KeyIDs  []string // signing keys in the copy, newest first
	Schema  uint64   // the copy's schema version
}

// CheckBackupTarget refuses a backup directory inside data_dir, or one that
// exists and is not empty. It returns dir made absolute.
func CheckBackupTarget(dataDir, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	src, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	if dir == src || strings.HasPrefix(dir, src+string(filepath.Separator)) {
		return "", fmt.Errorf("backup: %s is inside data_dir %s; back up to another directory", dir, src)
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("backup: %w", err)
	}
	if len(entries) > 0 {
		return "", fmt.Errorf("backup: %s is not empty; give a new or empty directory", dir)
	}
	return dir, nil
}

// ExtractBackup writes the stream WriteBackup made into dir (new or empty;
// created mode 0700), fsyncs it, and checks that the database opens and
// that the keys load as `herald serve` would read them. On failure it
// removes what it wrote.
func ExtractBackup(r io.Reader, dir, serverName string) (info BackupInfo, err error) {
	info.Dir = dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	defer func() {
		if err != nil {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return info, fmt.Errorf("backup: reading the copy: %w", err)
		}
		if !filepath.IsLocal(hdr.Name) {
			return info, fmt.Errorf("backup: refusing the path %q in the stream", hdr.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		perm := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, perm|0o700); err != nil {
				return info, fmt.Errorf("backup: %w", err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				return info, fmt.Errorf("backup: %w", err)
			}
			if err := writeFile(target, tr, perm); err != nil {
				return info, fmt.Errorf("backup: %w", err)
			}
			if hdr.Name == store.FileName {
				info.DBBytes = hdr.Size
			} else {
				info.Files++
			}
		default:
			return info, fmt.Errorf("backup: unexpected entry %q in the stream", hdr.Name)
		}
	}
	if info.DBBytes == 0 {
		return info, errors.New("backup: the stream held no database")
	}
	if err := syncTree(dir); err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return info, fmt.Errorf("backup: the copied database does not open: %w", err)
	}
	info.Schema, err = store.Version(db)
	db.Close()
	if err != nil {
		return info, fmt.Errorf("backup: the copied database: %w", err)
	}
	// OpenRing would make a first key where there is none: check first.
	if _, err := os.Stat(filepath.Join(dir, "keys", "ring.json")); err != nil {
		return info, fmt.Errorf("backup: the copy holds no signing keys: %w", err)
	}
	ring, err := keys.OpenRing(filepath.Join(dir, "keys"), serverName)
	if err != nil {
		return info, fmt.Errorf("backup: the copied keys: %w", err)
	}
	for _, k := range ring.List() {
		info.KeyIDs = append(info.KeyIDs, k.ID)
	}
	return info, nil
}

// Backup writes a backup of the open data_dir into dir (WriteBackup, then
// ExtractBackup, in process).
func (a *App) Backup(dir string) (BackupInfo, error) {
	dir, err := CheckBackupTarget(a.cfg.DataDir, dir)
	if err != nil {
		return BackupInfo{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(a.WriteBackup(pw)) }()
	info, err := ExtractBackup(pr, dir, a.cfg.ServerName)
	pr.CloseWithError(errors.New("backup: extraction stopped"))
	return info, err
}

func writeFile(path string, r io.Reader, perm fs.FileMode) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
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
