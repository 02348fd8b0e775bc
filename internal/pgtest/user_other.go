//go:build !unix

package pgtest

import (
	"fmt"
	"os/exec"
)

// asServerUser: the throwaway cluster needs a unix socket directory, so the
// PostgreSQL tests run on unix-like systems only.
func asServerUser(string) (func(*exec.Cmd), error) {
	return nil, fmt.Errorf("%w: the throwaway cluster runs on unix-like systems only", errNoPostgres)
}

func alive(int) bool { return true }
