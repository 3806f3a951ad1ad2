//go:build unix

package cluster

import "syscall"

// threadCPU returns the CPU time the calling thread has used, in
// nanoseconds (Linux; 0 elsewhere, where RUSAGE_THREAD does not exist).
func threadCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// rusageThread is Linux's RUSAGE_THREAD.
const rusageThread = 1

// processCPU returns the CPU time the process has used, user and system,
// in nanoseconds: on a shared machine it varies less than wall time, as
// time spent waiting for a core is not in it.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
