//go:build unix

package main

import (
	"os"
	"syscall"
)

// restartSignal, sent to `leasehold cluster`, restarts the nodes that are
// down.
var (
	restartSignal     os.Signal = syscall.SIGUSR1
	restartSignalName           = "USR1"
)
