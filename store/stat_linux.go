package store

import (
	"os"
	"syscall"
)

// statIDs returns the file's change time (ns), inode and device.
func statIDs(st os.FileInfo) (ctime int64, inode, dev uint64, ok bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, 0, false
	}
	return s.Ctim.Nano(), s.Ino, uint64(s.Dev), true
}
