package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// tryUntilAdmitted calls TryReserve once a second for a minute and
// returns after how many calls it admitted; -1 if never. Each call must
// return at once: the failure policy decides while the cluster is asked
// again in the background.
func tryUntilAdmitted(t *testing.T, b *client.Budget, cost client.Cost) int {
	t.Helper()
	for i := range 60 {
		start := time.Now()
		r, err := b.TryReserve(cost)
		if d := time.Since(start); d > 0 && err != nil {
			t.Fatalf("TryReserve #%d refused after %v: the policy should decide at once", i, d)
		}
		if err == nil {
			r.Cancel()
			return i
		}
		time.Sleep(time.Second)
	}
	return -1
}

// tryBudget is a Budget's shape for the TryReserve tests: token rules, an
// InFlight slot alone, or both.
type tryBudget struct {
	name  string
	rules []client.Rule
	cost  client.Cost
}

func tryBudgets() []tryBudget {
	slot := client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 5}}
	return []tryBudget{
		{"rules", bigRules(), call},
		{"slot", []client.Rule{slot}, client.Cost{}},
		{"rules and slot", append(bigRules(), slot), call},
	}
}

// fullBudget dials a fake cluster that is full, with a Client following
// policy (FailClosed or FailOpen), and returns the cluster and a Budget of
// rules that has learnt it is full: its first TryReserve of cost was
// refused as full, or, failing open, admitted and cancelled.
func fullBudget(t *testing.T, policy client.FailMode, rules []client.Rule, cost client.Cost) (*fakeCluster, *client.Budget) {
	t.Helper()
	f := newFake(t, 1)
	f.set(func(f *fakeCluster) { f.mu.full = true })
	c := f.dial(t, client.WithFailurePolicy(policy))
	b := c.Budget("scope", rules...)
	r, err := b.TryReserve(cost)
	switch {
	case policy == client.FailOpen && err != nil:
		t.Fatalf("TryReserve on a full cluster, failing open: %v", err)
	case policy == client.FailOpen:
		r.Cancel()
	case !errors.Is(err, transport.ErrFull):
		t.Fatalf("TryReserve on a full cluster, failing closed, = %v, want transport.ErrFull", err)
	}
	return f, b
}

// TestBudgetTryReserveAsksAgainAfterFull is the regression test of a Budget
// used only through TryReserve never asking the cluster again once it had
// refused as full: every rule (or the InFlight slot) was left to the
// failure policy for good, so FailClosed refused forever although the
// cluster had room again. Now, after the full cluster's backoff, the
// cluster is asked again in the background, and TryReserve admits.
func TestBudgetTryReserveAsksAgainAfterFull(t *testing.T) {
	for _, tc := range tryBudgets() {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, b := fullBudget(t, client.FailClosed, tc.rules, tc.cost)
				f.set(func(f *fakeCluster) { f.mu.full = false })
				n0 := len(f.acquires())
				// The full cluster's backoff is at most 5s.
				if i := tryUntilAdmitted(t, b, tc.cost); i < 0 || i > 7 {
					t.Errorf("TryReserve admitted after %d calls a second apart with room (-1: never); %d Acquires sent",
						i, len(f.acquires())-n0)
				}
			})
		})
	}
}

// TestBudgetTryReserveAsksAgainAfterOutage is the regression test of the
// same after an outage: once the cluster answers again, a TryReserve-only
// Budget failing closed admits within the backoff.
func TestBudgetTryReserveAsksAgainAfterOutage(t *testing.T) {
	for _, tc := range tryBudgets() {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				release := f.holdAcquires()
				c := f.dial(t, client.WithFailurePolicy(client.FailClosed))
				b := c.Budget("scope", tc.rules...)
				if _, err := b.TryReserve(tc.cost); err == nil {
					t.Fatal("TryReserve admitted in an outage, failing closed")
				}
				release()
				n0 := len(f.acquires())
				if i := tryUntilAdmitted(t, b, tc.cost); i < 0 || i > 3 {
					t.Errorf("TryReserve admitted after %d calls a second apart after the outage (-1: never); %d Acquires sent",
						i, len(f.acquires())-n0)
				}
			})
		})
	}
}

// TestBudgetTryReserveFailOpenKeepsTheLimitAfterOutage is the regression
// test of a FailOpen Budget used only through TryReserve admitting
// everything for good after an outage: 600 of 600 on a limit of 10 an
// hour. Once the cluster answers again, its word applies.
func TestBudgetTryReserveFailOpenKeepsTheLimitAfterOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		release := f.holdAcquires()
		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		b := c.Budget("scope", client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 10, Per: time.Hour}})
		one := client.Cost{Requests: 1}
		_, _ = b.TryReserve(one) // in the outage: the refresh it starts fails
		release()
		time.Sleep(10 * time.Second)
		n0 := len(f.acquires())
		admitted := 0
		for range 600 {
			if r, err := b.TryReserve(one); err == nil {
				admitted++
				if err := r.Settle(t.Context(), one); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The first after the outage is the policy's: the cluster's last
		// exchange failed, and it is asked again in the background.
		if admitted > 10+1 {
			t.Errorf("%d of 600 admitted after the outage on a limit of 10 an hour; %d Acquires", admitted, len(f.acquires())-n0)
		}
	})
}

// While the cluster stays full, a TryReserve-only Budget asks it at most
// once per backoff (fullBackoff, jittered over 2.5s to 5s), however often
// TryReserve is called, and never makes a caller wait for the answer.
func TestBudgetTryReserveAsksAFullClusterOncePerBackoff(t *testing.T) {
	for _, tc := range tryBudgets() {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, b := fullBudget(t, client.FailClosed, tc.rules, tc.cost)
				n0 := len(f.acquires())
				const span = 30 * time.Second
				for range int(span / (100 * time.Millisecond)) {
					start := time.Now()
					if _, err := b.TryReserve(tc.cost); err == nil {
						t.Fatal("TryReserve admitted on a full cluster, failing closed")
					}
					if d := time.Since(start); d > 0 {
						t.Fatalf("TryReserve took %v on a full cluster: the policy should decide at once", d)
					}
					time.Sleep(100 * time.Millisecond)
				}
				acq := f.acquires()[n0:]
				if n, most := len(acq), int(span/(fullBackoff/2))+1; n > most || n == 0 {
					t.Errorf("%d Acquires in %v of TryReserve every 100ms on a full cluster, want 1 to %d", n, span, most)
				}
				checkBackoffGaps(t, acq)
			})
		})
	}
}

const fullBackoff = 5 * time.Second

// checkBackoffGaps reports Acquires to a full cluster sent closer together
// than its backoff's least (half of fullBackoff): a Budget asks it once per
// backoff, for all its rules together.
func checkBackoffGaps(t *testing.T, acq []acquireRecord) {
	t.Helper()
	for i := 1; i < len(acq); i++ {
		if gap := acq[i].at - acq[i-1].at; gap < fullBackoff/2 {
			t.Errorf("Acquires %d and %d to a full cluster %v apart, want at least the backoff's least, %v (items %d and %d)",
				i-1, i, gap, fullBackoff/2, len(acq[i-1].req.GetItems()), len(acq[i].req.GetItems()))
		}
	}
}

// TestBudgetSlotProbeRefusedEndsTheFailure: a TryReserve-only Budget's
// InFlight slot, left to FailOpen by a full cluster, is probed once the
// backoff passes; the cluster answered that another process held the only
// slot, and that refusal, an answer, did not end the failure, so FailOpen
// went on admitting every call past the limit (300 of 300 in 30 s, a
// review), each starting another probe.
func TestBudgetSlotProbeRefusedEndsTheFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		slot := client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 1}}
		holder := f.dial(t).Budget("scope", slot)
		held, err := holder.Reserve(t.Context(), client.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		defer held.Cancel()

		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		b := c.Budget("scope", slot)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		if r, err := b.TryReserve(client.Cost{}); err != nil {
			t.Fatalf("TryReserve on a full cluster, failing open: %v", err)
		} else {
			r.Cancel()
		}
		f.set(func(f *fakeCluster) { f.mu.full = false })
		admitted := 0
		for range 300 {
			if r, err := b.TryReserve(client.Cost{}); err == nil {
				admitted++
				r.Cancel()
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Only within the full cluster's backoff (at most 5 s) does the
		// policy decide; after it, the cluster's answer does. The calls
		// at 0, 0.1 s, ..., 5 s are 51: the one at the backoff's end
		// starts the probe and is decided by the policy before the
		// answer comes (seen in 1 run of 10).
		if admitted > 51 {
			t.Errorf("%d of 300 TryReserve admitted by FailOpen while the cluster answered that the only slot is held", admitted)
		}
	})
}

// TestBudgetMixedCallersAskAFullClusterOncePerBackoff is the regression
// test of a Budget's token rules and InFlight slot drifting to separate
// backoffs when callers that wait (Reserve) and callers that do not
// (TryReserve) share it: a Reserve past the backoff sent the leased token
// rules through the Budget's refresh, which never carries the slot, and
// the slot was probed apart (14 Acquires in 30 s, some 25 ms apart).
func TestBudgetMixedCallersAskAFullClusterOncePerBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tc := tryBudgets()[2]
		f, b := fullBudget(t, client.FailClosed, tc.rules, tc.cost)
		n0 := len(f.acquires())
		const span = 30 * time.Second
		ctx, cancel := context.WithTimeout(t.Context(), span)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				if _, err := b.Reserve(ctx, tc.cost); err == nil {
					t.Error("Reserve admitted on a full cluster, failing closed")
				}
			}
		}()
		for ctx.Err() == nil {
			if _, err := b.TryReserve(tc.cost); err == nil {
				t.Fatal("TryReserve admitted on a full cluster, failing closed")
			}
			time.Sleep(100 * time.Millisecond)
		}
		<-done
		acq := f.acquires()[n0:]
		if n, most := len(acq), int(span/(fullBackoff/2))+1; n > most || n == 0 {
			t.Errorf("%d Acquires in %v of a waiting Reserve and TryReserve every 100ms on a full cluster, want 1 to %d", n, span, most)
		}
		checkBackoffGaps(t, acq)
	})
}
