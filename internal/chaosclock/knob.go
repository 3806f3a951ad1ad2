//go:build chaosclock

package chaosclock

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Enabled reports whether this binary was built with the knob.
const Enabled = true

// start is the origin of the knob's clock.
var start = time.Now()

type state struct {
	tl   timeline
	wall time.Duration
	gen  uint64
}

var (
	cur     atomic.Pointer[state]
	applyMu sync.Mutex
)

func init() {
	cur.Store(&state{tl: timeline{{}}})
	path := os.Getenv(EnvVar)
	if path == "" {
		return
	}
	// Listen first, then acknowledge: an ack promises that SIGUSR1 is
	// handled (without the knob it would kill the process).
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	apply(path)
	go func() {
		for range ch {
			apply(path)
		}
	}()
}

// apply reads path and, if it holds a new generation, applies it; then it
// acknowledges the generation in effect. A missing or bad file leaves the
// clock as it is (and says so on stderr: this is a test binary).
func apply(path string) {
	applyMu.Lock()
	defer applyMu.Unlock()
	c, err := ReadControl(path)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaosclock: %v\n", err)
		return
	}
	s := cur.Load()
	if c.Gen > s.gen {
		s = &state{tl: s.tl.bend(time.Since(start), c.RatePPM), wall: c.WallOffset, gen: c.Gen}
		cur.Store(s)
		fmt.Fprintf(os.Stderr, "chaosclock: gen %d: rate %+d ppm, wall offset %v\n", c.Gen, c.RatePPM, c.WallOffset)
	}
	if err := writeAck(path, s.gen); err != nil {
		fmt.Fprintf(os.Stderr, "chaosclock: ack: %v\n", err)
	}
}

// Monotonic reads the knob's monotonic clock: time since the process
// started, bent by every rate the controls set.
func Monotonic() time.Duration { return cur.Load().tl.at(time.Since(start)) }

// Since is the knob's clock's reading of the time elapsed since t, a
// time.Now reading taken in this process.
func Since(t time.Time) time.Duration {
	tl := cur.Load().tl
	return tl.at(time.Since(start)) - tl.at(t.Sub(start))
}

// Now is the wall clock shifted by the control's wall offset.
func Now() time.Time { return time.Now().Add(cur.Load().wall) }
