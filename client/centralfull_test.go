package client_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// TestCentralWaitersAskAFullClusterOncePerBackoff is the regression test of
// a central Limiter's Waits each sending an Acquire to a full cluster
// whenever the backoff ended (4 waiters: 14 Acquires in 20 s, all at one
// instant): one asks, the others wait for its answer.
func TestCentralWaitersAskAFullClusterOncePerBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
		l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})
		const waited = 20 * time.Second
		ctx, cancel := context.WithTimeout(t.Context(), waited)
		defer cancel()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if err := l.Wait(ctx); err == nil {
					t.Error("Wait on a full cluster, failing closed, = nil")
				}
			})
		}
		wg.Wait()
		// One Acquire per backoff (2.5s to 5s), never two at once.
		acq := f.acquires()
		if n, most := len(acq), int(waited/(fullBackoff/2))+1; n > most {
			t.Errorf("%d Acquires from 4 central Waits to a full cluster in %v, want at most %d", n, waited, most)
		}
		for i := 1; i < len(acq); i++ {
			if gap := acq[i].at - acq[i-1].at; gap < fullBackoff/2 {
				t.Errorf("Acquires %d and %d to a full cluster %v apart, want at least the backoff's least, %v",
					i-1, i, gap, fullBackoff/2)
			}
		}
	})
}
