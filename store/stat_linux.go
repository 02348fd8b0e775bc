package store

import (
	"os"
	"syscall"
	"time"
)

// statIDs returns the file's change time (ns), inode and device.
func statIDs(st os.FileInfo) (ctime int64, inode, dev uint64, ok bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, 0, false
	}
	return s.Ctim.Nano(), s.Ino, uint64(s.Dev), true
}

// lockShared waits at most timeout for a shared lock on f, which a running
// Herald's exclusive lock (bbolt's flock) refuses: ok false means the file
// is in use.
func lockShared(f *os.File, timeout time.Duration) (ok bool, err error) {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		if err == nil {
			return true, nil
		}
		if err != syscall.EWOULDBLOCK {
			return false, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}
