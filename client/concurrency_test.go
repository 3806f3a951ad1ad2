package client_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// Under concurrent Allow and AllowN, every admitted token comes from a lease:
// admitted = granted − given back at Close, exactly.
func TestConcurrentSpendingIsExact(t *testing.T) {
	for _, rate := range []int64{100000, 5000} { // enough for all, and not
		t.Run(fmt.Sprint(rate), func(t *testing.T) { testConcurrentSpending(t, rate) })
	}
}

func testConcurrentSpending(t *testing.T, rate int64) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: rate, Per: time.Second}))
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 2000 {
					n := int64(1 + (g+i)%3)
					if l.AllowN(n) {
						admitted.Add(n)
					}
				}
			})
		}
		wg.Wait()
		synctest.Wait()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		var granted, unused int64
		for _, g := range f.granted() {
			granted += g
		}
		for _, r := range f.releases() {
			unused += r.GetUnused()[0]
		}
		if got, want := admitted.Load(), granted-unused; got != want {
			t.Errorf("admitted %d, want granted %d - released %d = %d", got, granted, unused, want)
		}
		if admitted.Load() == 0 || admitted.Load() > rate {
			t.Errorf("admitted %d, want 1 to %d (the burst; no time passed)", admitted.Load(), rate)
		}
		t.Logf("admitted %d in %d acquires", admitted.Load(), len(f.acquires()))
	})
}
