//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// asServerUser prepares dir for PostgreSQL and returns how to run its
// commands. As an ordinary user they run as that user. As root (CI) they run
// as Debian's "postgres" user, which owns dir; initdb and postgres refuse
// root. On Linux the server also gets SIGQUIT (immediate shutdown) if the
// test binary dies without stopping it.
func asServerUser(dir string) (func(*exec.Cmd), error) {
	if os.Geteuid() != 0 {
		return func(cmd *exec.Cmd) { cmd.SysProcAttr = procAttr(nil) }, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root and there is no postgres user to run the server as "+
			"(Debian's postgresql package creates it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// The temporary directory and everything in it belong to postgres;
	// root (the test) reaches the socket anyway.
	err = filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	return func(cmd *exec.Cmd) {
		cmd.SysProcAttr = procAttr(cred)
		cmd.Dir = dir
		// HOME and the like would point at root's; postgres needs none.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	}, nil
}

// alive says a process with this id exists (0: no process).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
