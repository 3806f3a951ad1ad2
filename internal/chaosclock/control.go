// Package chaosclock is the test-only clock knob of the chaos harness: it
// lets jepsen make a node's or a client's clock run fast or slow, and shift
// its wall clock, while the process runs.
//
// The knob exists only in binaries built with -tags chaosclock; in every
// other build Enabled is false and the node and SDK read Go's monotonic clock
// directly, with no indirection. With the tag, a process whose environment
// names a control file in LEASEHOLD_CHAOS_CLOCK reads it at start and again
// on every SIGUSR1, and acknowledges each generation it applied by writing
// it to the file's ".ack" sibling.
//
// What the knob changes:
//   - Rate: the process's monotonic clock (the one cluster stamps log time
//     with and client measures leases on) advances at (1 + RatePPM/1e6) of
//     real time from the moment a control is applied. It is continuous and
//     never goes back: a rate change bends the clock, it does not jump it.
//     Within the designed bound ρ (client.WithClockDrift) a run must stay
//     valid; far beyond it (a client at half speed, a leader at double
//     speed) the checkers must catch it.
//   - Wall offset: the process's wall clock, as Now reports it and as its
//     log lines are stamped, is shifted by WallOffset. Node and SDK never
//     read the wall clock for a decision, so a jump or a skew must change
//     nothing; the run shows that it does not.
//
// Shifting the monotonic clock itself by a step is not a knob: CLOCK_MONOTONIC
// cannot step, and a process that sleeps through time (SIGSTOP) is the pause
// nemesis.
package chaosclock

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// EnvVar names the environment variable that holds a process's control file.
const EnvVar = "LEASEHOLD_CHAOS_CLOCK"

// A Control is what a control file says: from generation Gen on, the clock
// runs at rate 1 + RatePPM/1e6 and the wall clock is shifted by WallOffset.
type Control struct {
	Gen        uint64        `json:"gen"`
	RatePPM    int64         `json:"rate_ppm"`
	WallOffset time.Duration `json:"wall_offset_ns"`
}

// Rate bounds: the clock must advance (a rate above 0) and at most 10 times
// real time.
const (
	MinRatePPM = -999_999
	MaxRatePPM = 9_000_000
)

// Validate reports whether c can be applied.
func (c Control) Validate() error {
	if c.RatePPM < MinRatePPM || c.RatePPM > MaxRatePPM {
		return fmt.Errorf("chaosclock: rate %d ppm out of [%d, %d]", c.RatePPM, MinRatePPM, MaxRatePPM)
	}
	return nil
}

// WriteControl writes c to path atomically (a temporary file renamed over
// it), so a reader never sees half of it.
func WriteControl(path string, c Control) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return writeAtomic(path, b)
}

// ReadControl reads a control file.
func ReadControl(path string) (Control, error) {
	var c Control
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("chaosclock: %s: %w", path, err)
	}
	return c, c.Validate()
}

// AckPath is where a process acknowledges the generations of path it applied.
func AckPath(path string) string { return path + ".ack" }

// ReadAck returns the last generation a process acknowledged for path; ok
// is false if none did. A process with the knob acknowledges the control file
// it finds at start, after it has begun to handle SIGUSR1, so an ack also
// says that the signal is safe to send.
func ReadAck(path string) (gen uint64, ok bool, err error) {
	b, err := os.ReadFile(AckPath(path))
	if os.IsNotExist(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	gen, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return gen, err == nil, err
}

func writeAck(path string, gen uint64) error {
	return writeAtomic(AckPath(path), []byte(strconv.FormatUint(gen, 10)+"\n"))
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// scale returns d·(1 + ppm/1e6) without overflowing for any d a process
// lives through.
func scale(d time.Duration, ppm int64) time.Duration {
	const m = 1_000_000
	return d + (d/m)*time.Duration(ppm) + (d%m)*time.Duration(ppm)/m
}

// segment is a stretch of the knob's clock: from real time real (since the
// package started), the clock reads clock and advances at rate ppm.
type segment struct {
	real, clock time.Duration
	ppm         int64
}

// timeline is the knob's clock so far: segments in order of real time, the
// first at real time 0 with rate 0 ppm.
type timeline []segment

// at maps a real time since start to the knob's clock.
func (tl timeline) at(real time.Duration) time.Duration {
	i := len(tl) - 1
	for i > 0 && tl[i].real > real {
		i--
	}
	s := tl[i]
	return s.clock + scale(real-s.real, s.ppm)
}

// bend returns tl with the rate changed to ppm from real time real on.
func (tl timeline) bend(real time.Duration, ppm int64) timeline {
	out := append(timeline(nil), tl...)
	return append(out, segment{real: real, clock: tl.at(real), ppm: ppm})
}
