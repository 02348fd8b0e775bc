//go:build unix

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// dataDirOwner is the uid and gid owning dataDir, and ok when it exists and
// belongs to someone other than root.
func dataDirOwner(dataDir string) (uid, gid int, ok bool, err error) {
	st, err := os.Stat(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, false, nil
	} else if err != nil {
		return 0, 0, false, err
	}
	sys, isUnix := st.Sys().(*syscall.Stat_t)
	if !isUnix || sys.Uid == 0 {
		return 0, 0, false, nil
	}
	return int(sys.Uid), int(sys.Gid), true, nil
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return "#" + strconv.Itoa(uid)
}

// runAsDataDirOwner switches a command run as root to the user owning
// data_dir (the documented systemd unit runs Herald as `herald`), so every
// file it writes (ring.json, keys, the database) stays readable by the
// server. If the switch fails it refuses, naming the user to run as.
func runAsDataDirOwner(dataDir string, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, ok, err := dataDirOwner(dataDir)
	if err != nil || !ok {
		return err
	}
	name := userName(uid)
	err = syscall.Setgroups([]int{gid})
	if err == nil {
		err = syscall.Setgid(gid)
	}
	if err == nil {
		err = syscall.Setuid(uid)
	}
	if err != nil {
		return fmt.Errorf("data_dir %s belongs to %s (uid %d) and switching to that user failed (%v): run the command as %s, e.g. sudo -u %s herald ...", dataDir, name, uid, err, name, name)
	}
	log.Debug("running as the owner of data_dir", "user", name, "uid", uid)
	return nil
}

// makeDirFor creates dir (mode 0700) for a command run as root that will
// switch to data_dir's owner, and gives it to that owner so the command (or
// the running server) can write into it.
func makeDirFor(dataDir, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, ok, err := dataDirOwner(dataDir)
	if err != nil || !ok {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chown(dir, uid, gid)
}
