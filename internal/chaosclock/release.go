//go:build !chaosclock

package chaosclock

import "time"

// Enabled reports whether this binary was built with the knob: without
// -tags chaosclock it is not, and callers never reach the functions below.
const Enabled = false

// Monotonic is not available without the knob; callers check Enabled.
func Monotonic() time.Duration { panic("chaosclock: built without -tags chaosclock") }

// Since is not available without the knob; callers check Enabled.
func Since(time.Time) time.Duration { panic("chaosclock: built without -tags chaosclock") }

// Now is not available without the knob; callers check Enabled.
func Now() time.Time { panic("chaosclock: built without -tags chaosclock") }
