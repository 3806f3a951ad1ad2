package limiter

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkBucketTake: a warm bucket of 1000 per second, burst 100, taken 1
// token at a time with now advancing by one token's cost, so nearly every take
// succeeds and every take moves the state.
func BenchmarkBucketTake(b *testing.B) {
	tb := mustBucket(b, 1000, time.Second, 100)
	step := int64(tb.Cost(1))
	var s BucketState
	now := int64(1 << 40)
	allowed := 0
	b.ReportAllocs()
	for b.Loop() {
		now += step
		if tb.Take(&s, now, 1).Allowed {
			allowed++
		}
	}
	if allowed == 0 {
		b.Fatal("no take allowed")
	}
}

// BenchmarkBucketTakeDenied: an empty bucket at a fixed time: every take is
// denied and computes its RetryAfter.
func BenchmarkBucketTakeDenied(b *testing.B) {
	tb := mustBucket(b, 1000, time.Second, 100)
	var s BucketState
	now := int64(1 << 40)
	tb.Take(&s, now, 100)
	b.ReportAllocs()
	for b.Loop() {
		if tb.Take(&s, now, 1).Allowed {
			b.Fatal("take from an empty bucket allowed")
		}
	}
}

// BenchmarkWindowTake: a warm window of 1000 per second in 10 slots, one token
// per millisecond: the limit is reached now and then, so most takes succeed.
func BenchmarkWindowTake(b *testing.B) {
	for _, slots := range []int{10, MaxSlots} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			w := mustWindow(b, 1000, time.Second, slots)
			var s WindowState
			now := int64(1 << 40)
			w.Take(&s, now, 1)
			b.ReportAllocs()
			for b.Loop() {
				now += int64(time.Millisecond)
				w.Take(&s, now, 1)
			}
		})
	}
}

// BenchmarkWindowTakeDenied: a full window at a fixed time: every take is
// denied and searches for its RetryAfter.
func BenchmarkWindowTakeDenied(b *testing.B) {
	for _, slots := range []int{10, MaxSlots} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			w := mustWindow(b, 1000, time.Second, slots)
			var s WindowState
			now := int64(1 << 40)
			w.Take(&s, now, 1000)
			b.ReportAllocs()
			for b.Loop() {
				if w.Take(&s, now, 1).Allowed {
					b.Fatal("take from a full window allowed")
				}
			}
		})
	}
}

func BenchmarkConcurrencyTake(b *testing.B) {
	c, err := NewConcurrency(100)
	if err != nil {
		b.Fatal(err)
	}
	var s ConcurrencyState
	b.ReportAllocs()
	for b.Loop() {
		c.Take(&s, 1)
		c.Return(&s, 1)
	}
}

// TestTakeAllocs: no allocation on a warm state's Take, Check and Return paths.
// (A window's very first grant allocates its counters once.)
func TestTakeAllocs(t *testing.T) {
	tb := mustBucket(t, 1000, time.Second, 100)
	w := mustWindow(t, 1000, time.Second, 10)
	c, err := NewConcurrency(10)
	if err != nil {
		t.Fatal(err)
	}
	now := int64(1 << 40)
	var bs BucketState
	var ws WindowState
	var cs ConcurrencyState
	tb.Take(&bs, now, 1)
	w.Take(&ws, now, 1)
	tests := []struct {
		name string
		f    func()
	}{
		{name: "bucket take and return", f: func() {
			now += int64(time.Millisecond)
			tb.Take(&bs, now, 2)
			tb.Return(&bs, now, 1)
			tb.Check(bs, now, 1)
		}},
		{name: "bucket denied", f: func() { tb.TakeLeaving(&bs, now, 100, 0) }},
		{name: "window take and return", f: func() {
			now += int64(time.Millisecond)
			d, sp := w.TakeSpan(&ws, now, now+int64(300*time.Millisecond), 2)
			if d.Allowed {
				w.Return(&ws, now, sp, 2, 1)
			}
			w.Take(&ws, now, 1)
			w.Check(&ws, now, 1)
		}},
		{name: "window denied", f: func() { w.Take(&ws, now, 1000) }},
		{name: "concurrency", f: func() {
			c.Take(&cs, 1)
			c.Return(&cs, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := testing.AllocsPerRun(200, tt.f); got != 0 {
				t.Errorf("%v allocations per run, want 0", got)
			}
		})
	}
}
