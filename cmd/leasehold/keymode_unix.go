//go:build unix

package main

import (
	"fmt"
	"log/slog"
	"os"
)

// warnUnprotectedKey logs a warning, as ssh's "UNPROTECTED PRIVATE KEY
// FILE", when the key file at path, given by flag, is open to its group or
// others: anyone who can read it can act as the node. It does not refuse:
// a Kubernetes secret mounted for a pod's fsGroup is 0644 or 0640 and no
// more exposed than the pod. A file it cannot stat is left to the loader,
// which says why.
func warnUnprotectedKey(log *slog.Logger, flag, path string) {
	st, err := os.Stat(path) // through a symlink: a secret mount links to its files
	if err != nil {
		return
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		log.Warn(fmt.Sprintf("UNPROTECTED PRIVATE KEY FILE: %s %s is mode %#o, open to others than its owner; run chmod 600 %s",
			flag, path, mode, path), "file", path, "mode", fmt.Sprintf("%#o", mode))
	}
}
