package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrDamaged means herald.db is not a consistent bbolt file: truncated, or
// with pages overwritten. Herald refuses to serve from it (a damaged file
// only gets worse when written to) and says how to restore it.
var ErrDamaged = errors.New("the database is damaged")

// DamagedError says what is wrong with a database file and how to recover.
// Its text is one line.
type DamagedError struct {
	Path    string
	Problem string // the first problem found
	More    int    // how many more were found
}

func (e *DamagedError) Error() string {
	more := ""
	if e.More > 0 {
		more = fmt.Sprintf(" (and %d more problems)", e.More)
	}
	return fmt.Sprintf("%s: %v: %s%s; stop Herald, restore data_dir from a backup (herald.db together with its keys directory) and run `herald check` on it; `herald check` lists every problem", e.Path, ErrDamaged, e.Problem, more)
}

func (e *DamagedError) Unwrap() error { return ErrDamaged }

// bbolt's on-disk meta page (go.etcd.io/bbolt/internal/common/meta.go): a
// 16-byte page header, then magic, version, page size, flags, the root
// bucket (root page, sequence), the freelist page, the high-water mark
// (pgid), the transaction id and an FNV-64a checksum of the fields before it.
const (
	pageHeaderSize  = 16
	metaSize        = 64
	metaMagic       = 0xED0CDAED
	metaVersion     = 2
	pgidNoFreelist  = ^uint64(0)
	maxListedIssues = 20
)

type diskMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

func parseMeta(page []byte) (diskMeta, error) {
	if len(page) < pageHeaderSize+metaSize {
		return diskMeta{}, errors.New("meta page cut short")
	}
	m := page[pageHeaderSize : pageHeaderSize+metaSize]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != metaMagic {
		return diskMeta{}, errors.New("meta page has no bbolt magic number")
	}
	if le.Uint32(m[4:]) != metaVersion {
		return diskMeta{}, fmt.Errorf("meta page has format version %d, want %d", le.Uint32(m[4:]), metaVersion)
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return diskMeta{}, errors.New("meta page checksum mismatch")
	}
	return diskMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, nil
}

// preflight checks what bbolt trusts blindly when it maps a file: that a
// meta page is intact and that the file holds every page the meta page
// counts. Without it a truncated herald.db crashes the process with SIGBUS
// inside bolt.Open. A missing or empty file is fine (bbolt creates it).
func preflight(path string) error { return checkMeta(path, true) }

// checkMeta is preflight; walk also walks every page of the B+tree (read
// through ReadAt, so a wrong pointer cannot fault).
func checkMeta(path string, walk bool) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if size == 0 {
		return nil
	}
	damaged := func(format string, args ...any) error {
		return &DamagedError{Path: path, Problem: fmt.Sprintf(format, args...)}
	}
	first := make([]byte, 4096)
	if _, err := io.ReadFull(f, first); err != nil {
		return damaged("file is %d bytes, shorter than one page", size)
	}
	var metas []diskMeta
	var firstErr error
	m0, err := parseMeta(first)
	if err == nil {
		metas = append(metas, m0)
	} else {
		firstErr = err
	}
	// The second meta page sits one page in; without a readable first meta
	// page, try the page sizes bbolt is used with.
	sizes := []int64{4096, 8192, 16384, 65536}
	if err == nil {
		sizes = []int64{int64(m0.pageSize)}
	}
	for _, ps := range sizes {
		page := make([]byte, pageHeaderSize+metaSize)
		if _, err := f.ReadAt(page, ps); err != nil {
			continue
		}
		if m1, err := parseMeta(page); err == nil && int64(m1.pageSize) == ps {
			metas = append(metas, m1)
			break
		}
	}
	if len(metas) == 0 {
		return damaged("no intact meta page (%v)", firstErr)
	}
	// bbolt uses the valid meta page with the highest transaction id.
	m := metas[0]
	for _, o := range metas[1:] {
		if o.txid > m.txid {
			m = o
		}
	}
	if m.pageSize < 512 || m.pageSize&(m.pageSize-1) != 0 {
		return damaged("meta page names page size %d", m.pageSize)
	}
	if need := int64(m.pgid) * int64(m.pageSize); m.pgid > 1<<40 || need > size {
		return damaged("file is %d bytes but its meta page counts %d pages of %d bytes (%d bytes): it was truncated", size, m.pgid, m.pageSize, need)
	}
	if m.root < 2 || m.root >= m.pgid {
		return damaged("root page %d is outside the file's %d pages", m.root, m.pgid)
	}
	if m.freelist != pgidNoFreelist && (m.freelist < 2 || m.freelist >= m.pgid) {
		return damaged("freelist page %d is outside the file's %d pages", m.freelist, m.pgid)
	}
	if !walk {
		return nil
	}
	w := &walker{f: f, pageSize: int64(m.pageSize), hwm: m.pgid, seen: map[uint64]bool{}}
	if err := w.page(m.root); err != nil {
		return damaged("%v", err)
	}
	return nil
}

// bbolt's page layout (go.etcd.io/bbolt/internal/common/page.go): a
// 16-byte header (id, flags, element count, overflow page count), then
// 16-byte elements: a branch element is (pos, ksize, child page id), a leaf
// element (flags, pos, ksize, vsize), pos counted from the element itself.
// A leaf element flagged as a bucket holds the bucket's root page id and
// sequence, then, for an inline bucket (root 0), the bucket's own page.
const (
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01
	elementSize    = 16
)

// walker follows the B+tree from the root through every bucket, reading
// pages with ReadAt, not through mmap: it checks that every page a branch or
// bucket points to lies inside the file, names itself by its own id, is a
// branch or leaf page, and that every element lies inside its page. bbolt
// trusts all of that when it maps the file; a wrong pointer there faults
// inside bbolt (its Check runs on a goroutine of its own, where no fault can
// be recovered).
type walker struct {
	f        *os.File
	pageSize int64
	hwm      uint64
	seen     map[uint64]bool
}

func (w *walker) page(id uint64) error {
	if id < 2 || id >= w.hwm {
		return fmt.Errorf("page %d is referenced but lies outside the file's %d pages", id, w.hwm)
	}
	if w.seen[id] {
		return fmt.Errorf("page %d is referenced twice", id)
	}
	w.seen[id] = true
	buf := make([]byte, w.pageSize)
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("page %d: %w", id, err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(buf); got != id {
		return fmt.Errorf("page %d is overwritten: its header names page %d", id, got)
	}
	if overflow := uint64(le.Uint32(buf[12:])); overflow > 0 {
		if id+overflow >= w.hwm {
			return fmt.Errorf("page %d runs %d pages past the end of the file", id, overflow)
		}
		buf = append(buf, make([]byte, int64(overflow)*w.pageSize)...)
		if _, err := w.f.ReadAt(buf[w.pageSize:], int64(id+1)*w.pageSize); err != nil {
			return fmt.Errorf("page %d: %w", id, err)
		}
	}
	return w.node(buf, id)
}

// node checks one branch or leaf page held in buf (a page of the file, or
// an inline bucket's page inside its parent's value).
func (w *walker) node(buf []byte, id uint64) error {
	if len(buf) < pageHeaderSize {
		return fmt.Errorf("page %d: inline bucket cut short", id)
	}
	le := binary.LittleEndian
	flags, count := le.Uint16(buf[8:]), int(le.Uint16(buf[10:]))
	if flags != branchPageFlag && flags != leafPageFlag {
		return fmt.Errorf("page %d is overwritten: type flags %#x are neither branch nor leaf", id, flags)
	}
	if pageHeaderSize+count*elementSize > len(buf) {
		return fmt.Errorf("page %d is overwritten: %d elements do not fit in it", id, count)
	}
	for i := range count {
		off := pageHeaderSize + i*elementSize
		e := buf[off : off+elementSize]
		if flags == branchPageFlag {
			pos, ksize := int64(le.Uint32(e)), int64(le.Uint32(e[4:]))
			if int64(off)+pos+ksize > int64(len(buf)) {
				return fmt.Errorf("page %d is overwritten: element %d's key lies outside it", id, i)
			}
			if err := w.page(le.Uint64(e[8:])); err != nil {
				return err
			}
			continue
		}
		eflags, pos, ksize, vsize := le.Uint32(e), int64(le.Uint32(e[4:])), int64(le.Uint32(e[8:])), int64(le.Uint32(e[12:]))
		end := int64(off) + pos + ksize + vsize
		if end > int64(len(buf)) {
			return fmt.Errorf("page %d is overwritten: element %d's key or value lies outside it", id, i)
		}
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		v := buf[int64(off)+pos+ksize : end]
		if len(v) < 16 {
			return fmt.Errorf("page %d is overwritten: bucket entry %d is too short", id, i)
		}
		if root := le.Uint64(v); root != 0 {
			if err := w.page(root); err != nil {
				return err
			}
		} else if err := w.node(v[16:], id); err != nil {
			return err
		}
	}
	return nil
}

// guard runs fn with memory faults turned into panics and any panic turned
// into a DamagedError: bbolt reads the file through mmap and panics (or
// faults) on pages that do not make sense.
func guard(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = &DamagedError{Path: path, Problem: oneLine(fmt.Sprint(r))}
		}
	}()
	return fn()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// consistency runs bbolt's consistency check (every page reachable once,
// every key in order, every page inside the file) and returns at most
// maxListedIssues problems, and how many there were in all.
func consistency(db *bolt.DB) (problems []string, total int, err error) {
	err = guard(db.Path(), func() error {
		return db.View(func(tx *bolt.Tx) error {
			for e := range tx.Check() {
				if total < maxListedIssues {
					problems = append(problems, oneLine(strings.TrimPrefix(e.Error(), "panic: ")))
				}
				total++
			}
			return nil
		})
	})
	return problems, total, err
}

// Check runs bbolt's consistency check on an open database and returns a
// DamagedError (wrapping ErrDamaged) describing the first problem, or nil.
func Check(db *bolt.DB) error {
	problems, total, err := consistency(db)
	if err != nil {
		return err
	}
	if total > 0 {
		return &DamagedError{Path: db.Path(), Problem: problems[0], More: total - 1}
	}
	return nil
}

// Usable reports whether db can still be read: a read transaction that
// reads the schema version, with bbolt's panics and memory faults on
// damaged pages turned into a DamagedError. It is cheap (one page read), for
// readiness checks; Check is the thorough one.
func Usable(db *bolt.DB) error {
	return guard(db.Path(), func() error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(metaBucket)
			if b == nil || len(b.Get([]byte("schema_version"))) != 8 {
				return &DamagedError{Path: db.Path(), Problem: "no schema version recorded"}
			}
			return nil
		})
	})
}

// Report is what CheckFile found in a database file.
type Report struct {
	Path     string
	Problems []string // at most 20, one line each
	Total    int      // all problems found
}

// CheckFile checks the database file at path without changing it: the
// meta pages and file size, then (opened read-only with opts) bbolt's
// consistency check. err is for a file that
// cannot be checked at all (missing, locked by a running Herald); a damaged
// file gives a Report with problems. nil opts wait one second for the lock.
func CheckFile(path string, opts *bolt.Options) (Report, error) {
	rep := Report{Path: path}
	st, err := os.Stat(path)
	if err != nil {
		return rep, err
	}
	if st.Size() == 0 {
		rep.Problems, rep.Total = []string{"the file is empty (0 bytes)"}, 1
		return rep, nil
	}
	damage := func(err error) (Report, error) {
		var de *DamagedError
		if errors.As(err, &de) {
			rep.Problems, rep.Total = []string{de.Problem}, 1
			return rep, nil
		}
		return rep, err
	}
	o := bolt.Options{ReadOnly: true, Timeout: time.Second}
	if opts != nil {
		o = *opts
		o.ReadOnly = true
	}
	// Under a shared lock, like Open: a running Herald's writes would make
	// the pages read here inconsistent.
	unlock, err := sharedLock(path, o.Timeout)
	if err != nil {
		return rep, err
	}
	defer unlock()
	if err := preflight(path); err != nil {
		return damage(err)
	}
	var db *bolt.DB
	if err := guard(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, &o)
		return err
	}); err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return rep, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		var de *DamagedError
		if errors.As(err, &de) {
			return damage(err)
		}
		// bbolt's own refusals (invalid database, version mismatch, ...)
		// are about the file's content.
		return damage(&DamagedError{Path: path, Problem: oneLine(err.Error())})
	}
	defer db.Close()
	rep.Problems, rep.Total, err = consistency(db)
	if err != nil {
		return damage(err)
	}
	if rep.Total == 0 {
		if err := Usable(db); err != nil {
			return damage(err)
		}
	}
	return rep, nil
}

// OpenReadOnly opens the database file at path read-only (for `herald
// check`), after the same file checks as Open, waiting at most timeout for
// the lock a running Herald holds.
func OpenReadOnly(path string, timeout time.Duration) (*bolt.DB, error) {
	unlock, err := sharedLock(path, timeout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := preflight(path); err != nil {
		return nil, err
	}
	var db *bolt.DB
	err = guard(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
		return err
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w", path, ErrLocked)
	}
	return db, err
}

// sharedLock holds a shared lock on the file at path (see lockShared) until
// unlock; ErrLocked when a running Herald holds it.
func sharedLock(path string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	ok, err := lockShared(f, timeout)
	if err != nil || !ok {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
