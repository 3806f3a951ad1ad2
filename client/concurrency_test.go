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

// Under concurrent Allow and AllowN, every token admitted from a lease is
// one the leases granted and did not give back at Close, exactly; a
// caller the refreshes left without a token decides centrally, and what is
// left of a central grant after the requests it carried goes unused.
func TestConcurrentSpendingIsExact(t *testing.T) {
	for _, rate := range []int64{100000, 5000} { // enough for all, and not
		t.Run(fmt.Sprint(rate), func(t *testing.T) { testConcurrentSpending(t, rate) })
	}
}

func testConcurrentSpending(t *testing.T, rate int64) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		start := time.Now()
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
		var leased, central, unused, centrals int64
		for _, g := range f.grants() {
			if g.lease {
				leased += g.n
			} else {
				central += g.n
				centrals++
			}
		}
		for _, r := range f.releases() {
			unused += r.GetUnused()[0]
		}
		// Every token a lease gave is one the SDK counts as admitted, and
		// none more than the leases granted less what went back. Exactly
		// that many unless the bubble's clock moved (it does when every
		// goroutine blocks at once, waiting on an Acquire): then a lease
		// can expire with a token left, which the cluster takes back at its
		// deadline without a Release (this test failed so once in CI,
		// 4999 of 5000, under -race -shuffle with the whole package).
		st := c.Stats()
		if got := st.Admitted.Leased + st.Admitted.Central + st.Admitted.Fallback; got != uint64(admitted.Load()) {
			t.Errorf("the SDK counts %d tokens admitted (%+v); the callers were told yes for %d", got, st.Admitted, admitted.Load())
		}
		if got, want := int64(st.Admitted.Leased), leased-unused; got > want || got != want && time.Since(start) == 0 {
			t.Errorf("admitted %d from leases, want granted %d - released %d = %d (the clock moved %v)", got, leased, unused, want, time.Since(start))
		}
		// A central grant (a caller that two refreshes left without a
		// token decides on its own) goes to the requests it carries in
		// arrival order; what is left after them, less than the largest
		// refused request (3 tokens), is not used (DESIGN.md, "Concurrent
		// central requests share an Acquire"). This part failed 4 times
		// in 3000 runs as "admitted 4999" when it was counted as exact.
		if got := int64(st.Admitted.Central); got > central || central-got > 2*centrals {
			t.Errorf("admitted %d centrally of %d granted in %d central decisions, want %d less at most 2 per decision", got, central, centrals, central)
		}
		if admitted.Load() == 0 || admitted.Load() > rate {
			t.Errorf("admitted %d, want 1 to %d (the burst; no time passed)", admitted.Load(), rate)
		}
		t.Logf("admitted %d in %d acquires, %v on the bubble's clock", admitted.Load(), len(f.acquires()), time.Since(start))
	})
}
