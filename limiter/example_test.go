package limiter_test

import (
	"fmt"
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// A bucket of 2 tokens per second holding at most 3. Time is the caller's log
// time in nanoseconds; here it starts at 0.
func ExampleTokenBucket() {
	b, err := limiter.NewTokenBucket(2, time.Second, 3)
	if err != nil {
		panic(err)
	}
	var s limiter.BucketState // the zero state is a full bucket

	show := func(at time.Duration, n int64) {
		d := b.Take(&s, int64(at), n)
		retry := d.RetryAfter.String()
		if d.RetryAfter == limiter.Never {
			retry = "never"
		}
		fmt.Printf("t=%v take %d: allowed=%v remaining=%d retry-after=%s\n", at, n, d.Allowed, d.Remaining, retry)
	}
	show(0, 3)                    // the whole burst
	show(0, 1)                    // empty: a token refills every 500ms
	show(500*time.Millisecond, 1) // one token back
	show(500*time.Millisecond, 4) // more than the burst: never
	// Output:
	// t=0s take 3: allowed=true remaining=0 retry-after=0s
	// t=0s take 1: allowed=false remaining=0 retry-after=500ms
	// t=500ms take 1: allowed=true remaining=0 retry-after=0s
	// t=500ms take 4: allowed=false remaining=0 retry-after=never
}

// A window of at most 2 tokens in any second, counted in 10 slots of 100ms.
// A grant counts in every 11-slot window that contains it, so a window that
// is full at 100.0s admits again from 101.1s.
func ExampleSlidingWindow() {
	w, err := limiter.NewSlidingWindow(2, time.Second, 10)
	if err != nil {
		panic(err)
	}
	var s limiter.WindowState // the zero state is an empty window

	show := func(at time.Duration, n int64) {
		d := w.Take(&s, int64(at), n)
		fmt.Printf("t=%v take %d: allowed=%v remaining=%d retry-after=%v\n", at, n, d.Allowed, d.Remaining, d.RetryAfter)
	}
	show(100*time.Second, 2)
	show(100500*time.Millisecond, 1)
	show(101100*time.Millisecond, 1)
	fmt.Println("empty at 102.2s:", w.Empty(&s, int64(102200*time.Millisecond)))
	// Output:
	// t=1m40s take 2: allowed=true remaining=0 retry-after=0s
	// t=1m40.5s take 1: allowed=false remaining=0 retry-after=600ms
	// t=1m41.1s take 1: allowed=true remaining=1 retry-after=0s
	// empty at 102.2s: true
}

// A bucket of 10 tokens per second, burst 5, that may owe up to 5 tokens: a
// reservation that turned out short is charged afterwards, into debt, and
// the refill repays the debt before anything new is admitted.
func ExampleTokenBucket_Charge() {
	b, err := limiter.NewTokenBucket(10, time.Second, 5)
	if err != nil {
		panic(err)
	}
	var s limiter.BucketState
	b.Take(&s, 0, 4) // a reservation of 4
	charged := b.Charge(&s, 0, 9, 5)
	fmt.Printf("charged %d of 9, level %d\n", charged, b.Level(s, 0))
	// Owing 5 at 10 a second, the bucket is empty at 0.5s and holds a
	// token at 0.6s.
	fmt.Println("take 1 at 0.5s:", b.Take(&s, int64(500*time.Millisecond), 1).Allowed)
	fmt.Println("take 1 at 0.6s:", b.Take(&s, int64(600*time.Millisecond), 1).Allowed)
	// Output:
	// charged 6 of 9, level -5
	// take 1 at 0.5s: false
	// take 1 at 0.6s: true
}
