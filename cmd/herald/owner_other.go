//go:build !unix

package main

import "log/slog"

// runAsDataDirOwner: ownership switching is a unix matter; elsewhere
// commands run as whoever starts them.
func runAsDataDirOwner(dataDir string, log *slog.Logger) error { return nil }

// makeDirFor has nothing to do off unix.
func makeDirFor(dataDir, dir string) error { return nil }
