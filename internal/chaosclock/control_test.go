package chaosclock

import (
	"path/filepath"
	"testing"
	"time"
)

func TestScale(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		ppm  int64
		want time.Duration
	}{
		{time.Second, 0, time.Second},
		{time.Second, 1000, time.Second + time.Millisecond},
		{time.Second, -500_000, 500 * time.Millisecond},
		{time.Second, 1_000_000, 2 * time.Second},
		{100 * 365 * 24 * time.Hour, 1_000_000, 200 * 365 * 24 * time.Hour}, // no overflow in a century
		{1500 * time.Nanosecond, 1000, 1501 * time.Nanosecond},
	} {
		if got := scale(tc.d, tc.ppm); got != tc.want {
			t.Errorf("scale(%v, %d) = %v; want %v", tc.d, tc.ppm, got, tc.want)
		}
	}
}

// A rate change bends the clock: continuous at the change, the new rate
// after it, the old readings unchanged.
func TestTimelineBendsWithoutJumps(t *testing.T) {
	tl := timeline{{}}
	tl = tl.bend(10*time.Second, -500_000)  // half speed from 10s
	tl = tl.bend(20*time.Second, 1_000_000) // double speed from 20s
	for _, tc := range []struct{ real, want time.Duration }{
		{0, 0},
		{5 * time.Second, 5 * time.Second},
		{10 * time.Second, 10 * time.Second},
		{14 * time.Second, 12 * time.Second},
		{20 * time.Second, 15 * time.Second},
		{21 * time.Second, 17 * time.Second},
	} {
		if got := tl.at(tc.real); got != tc.want {
			t.Errorf("at(%v) = %v; want %v", tc.real, got, tc.want)
		}
	}
	for r := time.Duration(0); r < 30*time.Second; r += 7 * time.Millisecond {
		if tl.at(r+time.Millisecond) <= tl.at(r) {
			t.Fatalf("clock does not advance at %v", r)
		}
	}
}

func TestControlFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clock")
	want := Control{Gen: 7, RatePPM: -500_000, WallOffset: -2 * time.Hour}
	if err := WriteControl(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadControl(path)
	if err != nil || got != want {
		t.Fatalf("ReadControl = %+v, %v; want %+v", got, err, want)
	}
	if _, ok, err := ReadAck(path); ok || err != nil {
		t.Fatalf("ReadAck before any ack = ok %v, %v; want none", ok, err)
	}
	if err := writeAck(path, 7); err != nil {
		t.Fatal(err)
	}
	if gen, ok, err := ReadAck(path); gen != 7 || !ok || err != nil {
		t.Fatalf("ReadAck = %d, %v, %v; want 7", gen, ok, err)
	}
	for _, bad := range []int64{-1_000_000, MaxRatePPM + 1} {
		if err := WriteControl(path, Control{Gen: 8, RatePPM: bad}); err == nil {
			t.Errorf("WriteControl with rate %d ppm: no error", bad)
		}
	}
}
