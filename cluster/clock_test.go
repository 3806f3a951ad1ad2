package cluster

import (
	"testing"
	"time"
)

// TestLogClock: stamps count monotonic time from the barrier, never go
// backwards and saturate instead of overflowing.
func TestLogClock(t *testing.T) {
	const maxInt64 = 1<<63 - 1
	type step struct {
		mono time.Duration
		want int64
	}
	tests := []struct {
		name  string
		tBase int64
		mBase time.Duration
		steps []step
	}{
		{"counts from the barrier", 1000, 50, []step{{50, 1000}, {60, 1010}, {1050, 2000}}},
		{"a reading before the barrier counts as none", 1000, 50, []step{{10, 1000}, {-1 << 40, 1000}, {51, 1001}}},
		{"a jump back repeats the last stamp", 0, 0, []step{{100, 100}, {40, 100}, {99, 100}, {101, 101}}},
		{"saturates", maxInt64 - 10, 0, []step{{5, maxInt64 - 5}, {20, maxInt64}, {30, maxInt64}}},
		{"difference overflow saturates", 0, -1 << 62, []step{{maxInt64, maxInt64}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c logClock
			c.start(7, tt.tBase, tt.mBase)
			if !c.ready || c.term != 7 {
				t.Fatalf("after start: ready %v term %d; want ready in term 7", c.ready, c.term)
			}
			for i, s := range tt.steps {
				if got := c.stamp(s.mono); got != s.want {
					t.Errorf("step %d: stamp(%v) = %d; want %d", i, s.mono, got, s.want)
				}
			}
		})
	}
}

// TestLogClockRestart: a new term starts from its own barrier's log time, not
// from the previous term's stamps; stop makes the clock not ready.
func TestLogClockRestart(t *testing.T) {
	var c logClock
	c.start(1, 100, 0)
	if got := c.stamp(time.Hour); got != 100+int64(time.Hour) {
		t.Fatalf("stamp = %d", got)
	}
	c.stop()
	if c.ready {
		t.Fatal("ready after stop")
	}
	c.start(3, 500, time.Hour)
	if got := c.stamp(time.Hour + 5); got != 505 {
		t.Errorf("first stamp of the next term = %d; want 505", got)
	}
}
