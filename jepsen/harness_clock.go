//go:build unix

package jepsen

import "golang.org/x/sys/unix"

// MonotonicNow returns the host's CLOCK_MONOTONIC in nanoseconds: the one
// reference clock every process of a run stamps its history with. Unlike a
// process's own monotonic clock (time.Since of a start time), its origin is
// shared by every process on the host, so readings taken in different
// processes compare directly; unlike the wall clock, it never jumps.
func MonotonicNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC exists on every Linux; failing to read it means
		// the history cannot be trusted at all.
		panic("jepsen: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}
