package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// TestBudgetRefusedProbeAdmitsNothing is the regression test of a Budget's
// InFlight slot probe that the cluster refused (PermissionDenied,
// NoLimit: a refusal, not an outage) being recorded as nothing: the slot
// stayed unreachable with its backoff past, so FailOpen admitted every
// TryReserve and each sent another probe. A refused key admits nothing,
// whatever the policy, as a Limiter's does, and is not asked again.
func TestBudgetRefusedProbeAdmitsNothing(t *testing.T) {
	for _, refusal := range []struct {
		name       string
		err, match error
	}{
		{"permission denied", fmt.Errorf("%w: client/app may not call Acquire", transport.ErrPermissionDenied), transport.ErrPermissionDenied},
		{"no limit", transport.ErrNoLimit, transport.ErrNoLimit},
	} {
		for _, tc := range tryBudgets() {
			t.Run(refusal.name+"/"+tc.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					f, b := fullBudget(t, client.FailOpen, tc.rules, tc.cost)
					f.set(func(f *fakeCluster) { f.mu.full, f.mu.refuse = false, refusal.err })
					n0 := len(f.acquires())
					admitted, last := 0, error(nil)
					for range 300 {
						if r, err := b.TryReserve(tc.cost); err == nil {
							admitted++
							r.Cancel()
						} else {
							last = err
						}
						time.Sleep(100 * time.Millisecond)
					}
					n := len(f.acquires()) - n0
					// Only within the full cluster's backoff (at most 5 s:
					// 51 calls, the one that asks again among them) does
					// the policy decide; then one Acquire learns of the
					// refusal, and one more at most asks again after the
					// refusal backoff (15–30 s) in the 30 s of calls.
					if admitted > 51 || n < 1 || n > 2 {
						t.Errorf("%d of 300 TryReserve admitted by FailOpen, %d Acquires sent, after the cluster refused the budget's keys; want at most 51, and 1 or 2",
							admitted, n)
					}
					if !errors.Is(last, refusal.match) {
						t.Errorf("TryReserve = %v, want the cluster's refusal, %v", last, refusal.match)
					}
				})
			})
		}
	}
}

// TestBudgetWaitersAskAFullClusterOncePerBackoff is the regression test of
// a Budget's Reserves waiting on a full cluster each sending an Acquire for
// the InFlight slot when the backoff ended (N waiters, N Acquires at one
// instant): one asks, the others wait for its answer, as a central
// Limiter's Waits do.
func TestBudgetWaitersAskAFullClusterOncePerBackoff(t *testing.T) {
	for _, tc := range tryBudgets() {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// Learn that the cluster is full first: Reserves that ask
				// before any answer each send their own Acquire.
				f, b := fullBudget(t, client.FailClosed, tc.rules, tc.cost)
				const waited = 20 * time.Second
				ctx, cancel := context.WithTimeout(t.Context(), waited)
				defer cancel()
				var wg sync.WaitGroup
				for range 4 {
					wg.Go(func() {
						if _, err := b.Reserve(ctx, tc.cost); !errors.Is(err, transport.ErrFull) || !errors.Is(err, client.ErrUnavailable) {
							t.Errorf("Reserve on a full cluster, failing closed, = %v, want transport.ErrFull and ErrUnavailable", err)
						}
					})
				}
				wg.Wait()
				acq := f.acquires()
				if n, most := len(acq), int(waited/(fullBackoff/2))+1; n > most {
					t.Errorf("%d Acquires from 4 Reserves waiting on a full cluster in %v, want at most %d", n, waited, most)
				}
				checkBackoffGaps(t, acq)
			})
		})
	}
}

// After a failed exchange of a Budget with token rules and an InFlight
// slot, one probe asks for all of them (at the reservation's amounts) and
// gives its grant back whole: it has no caller.
func TestBudgetProbeAsksForEveryRuleAndGivesItBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := tryBudgets()[2]
		f, b := fullBudget(t, client.FailOpen, tc.rules, tc.cost)
		f.set(func(f *fakeCluster) { f.mu.full = false })
		time.Sleep(fullBackoff)
		n0 := len(f.acquires())
		if r, err := b.TryReserve(tc.cost); err != nil {
			t.Fatalf("TryReserve past the backoff, failing open: %v", err)
		} else {
			r.Cancel() // the policy's: nothing was taken from the cluster
		}
		time.Sleep(time.Second)
		acq := f.acquires()[n0:]
		if len(acq) != 1 || len(acq[0].req.GetItems()) != len(tc.rules) {
			t.Fatalf("%d Acquires past the backoff, want 1 probe of all %d rules", len(acq), len(tc.rules))
		}
		for _, key := range b.Keys()[:len(tc.rules)-1] {
			if n := f.net(key); n != 0 {
				t.Errorf("%s: the probe kept %d tokens, want all given back", key, n)
			}
		}
	})
}

// TestBudgetProbeEndsAfterItsGiveBack is the regression test of a probe
// whose answer no caller took (dropAnswer) ending before its grant was
// given back: the Reserve waiting for it woke and asked while the probe's
// lease still held the only slot, and was refused (an Acquire more). Now
// the probe ends once the Release is answered, and the waiter's Acquire is
// granted.
func TestBudgetProbeEndsAfterItsGiveBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, b := fullBudget(t, client.FailClosed, []client.Rule{{Counts: client.InFlight, Limit: client.Limit{Rate: 1}}}, client.Cost{})
		f.set(func(f *fakeCluster) {
			f.mu.full, f.mu.delay, f.mu.releaseDelay = false, 1500*time.Millisecond, 300*time.Millisecond
		})
		time.Sleep(fullBackoff)
		n0 := len(f.acquires())

		// A probes, and leaves before the answer (within the request
		// timeout, 2 s, as B's wait for it): the probe's grant is given
		// back by dropAnswer.
		ctxA, cancelA := context.WithTimeout(t.Context(), time.Second)
		defer cancelA()
		var wg sync.WaitGroup
		wg.Go(func() {
			if r, err := b.Reserve(ctxA, client.Cost{}); err == nil {
				t.Error("Reserve admitted after its context ended")
				r.Cancel()
			}
		})
		synctest.Wait() // A's Acquire is out, held by the fake
		f.set(func(f *fakeCluster) { f.mu.delay = 0 })
		wg.Go(func() {
			r, err := b.Reserve(t.Context(), client.Cost{})
			if err != nil {
				t.Errorf("Reserve waiting for another's probe = %v, want admitted", err)
				return
			}
			r.Cancel()
		})
		wg.Wait()
		if n := len(f.acquires()) - n0; n != 2 {
			t.Errorf("%d Acquires of a probe and the Reserve waiting for it, want 2: the waiter asked while the probe held the slot", n)
		}
	})
}
