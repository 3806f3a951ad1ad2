//go:build chaosclock

package chaosclock

import (
	"path/filepath"
	"testing"
	"time"
)

// apply takes a new generation once, acknowledges it, and bends the clock.
func TestApplyBendsTheClockAndAcks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	if err := WriteControl(path, Control{Gen: 1, RatePPM: 1_000_000, WallOffset: time.Hour}); err != nil {
		t.Fatal(err)
	}
	before := Monotonic()
	apply(path)
	if gen, ok, err := ReadAck(path); gen != 1 || !ok || err != nil {
		t.Fatalf("ack = %d, %v, %v; want 1", gen, ok, err)
	}
	if d := time.Until(Now()); d < 59*time.Minute {
		t.Errorf("Now is %v ahead; want an hour", d)
	}
	r0, m0 := time.Now(), Monotonic()
	for time.Since(r0) < 20*time.Millisecond { // spin: the clock is the subject
	}
	real, knob := time.Since(r0), Monotonic()-m0
	if knob < real*3/2 {
		t.Errorf("at double speed the knob advanced %v in %v of real time", knob, real)
	}
	if m0 < before {
		t.Errorf("the clock went back at the change: %v then %v", before, m0)
	}
	// The same generation again changes nothing.
	apply(path)
	m1 := Monotonic()
	if err := WriteControl(path, Control{Gen: 1, RatePPM: 0}); err != nil {
		t.Fatal(err)
	}
	apply(path)
	if cur.Load().tl[len(cur.Load().tl)-1].ppm != 1_000_000 || Monotonic() < m1 {
		t.Error("an old generation was applied")
	}
}
