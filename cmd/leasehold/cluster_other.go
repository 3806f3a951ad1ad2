//go:build !unix

package main

import "os"

// Outside Unix there is no SIGUSR1: `leasehold cluster` cannot be asked to
// restart a node; start it again instead.
var (
	restartSignal     os.Signal
	restartSignalName = ""
)
