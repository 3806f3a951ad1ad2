package client_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// The review's two processes × 8 goroutines on a cap of 4 got 159 and 1
// reservations: the process holding the slots gave each one that came back
// to its own waiters at once, while the other's waited out a backoff of up
// to 1s and failed fast on it. Over five runs of 15s, the process that got
// fewer gets a fair part of the slots on average (a run can still go one
// way: the process holding the slots learns first of each that comes
// back), and the slots stay busy.
func TestSlotsSharedBetweenProcesses(t *testing.T) {
	const runs = 5
	var share float64
	for range runs {
		share += slotShare(t) / runs
	}
	t.Logf("the process with fewer reservations got %.2f of them on average", share)
	if share < 0.2 {
		t.Errorf("the part of the reservations the process with fewer got = %.2f on average, want at least 0.2 (0.5: fair)", share)
	}
}

// slotShare runs two processes × 8 goroutines on a cap of 4 for 15s and
// returns the part of the reservations the one with fewer got.
func slotShare(t *testing.T) (share float64) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.delay, f.mu.replyDelay = time.Millisecond, time.Millisecond })
		rules := []client.Rule{
			{Counts: client.InFlight, Limit: client.Limit{Rate: 4}},
			{Counts: client.InputTokens, Limit: client.Limit{Rate: 1_800_000, Per: time.Minute}},
		}
		const hold, run = 100 * time.Millisecond, 15 * time.Second
		cost := client.Cost{Requests: 1, InputTokens: 10}
		var got [2]int
		var mu sync.Mutex
		var wg sync.WaitGroup
		end := time.Now().Add(run)
		for p := range 2 {
			b := f.dial(t).Budget("s", rules...)
			for range 8 {
				wg.Go(func() {
					for time.Now().Before(end) {
						ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
						r, err := b.Reserve(ctx, cost)
						cancel()
						if err != nil {
							time.Sleep(10 * time.Millisecond)
							continue
						}
						mu.Lock()
						got[p]++
						mu.Unlock()
						time.Sleep(hold)
						r.Settle(t.Context(), cost)
					}
				})
			}
		}
		wg.Wait()
		total, most := got[0]+got[1], int(run/hold)*4
		t.Logf("reservations %v of at most %d; %d acquires", got, most, len(f.acquires()))
		if total < most*8/10 {
			t.Errorf("reservations = %d, want at least 80%% of the %d the slots allow", total, most)
		}
		share = float64(min(got[0], got[1])) / float64(total)
	})
	return share
}
