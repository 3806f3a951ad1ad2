package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// refusals are the cluster's refusals an operator can lift without a new
// build of the app: a limit set (leasehold limits apply) for a node that
// refuses clients' inline limits, a role granted.
var refusals = []struct {
	name   string
	refuse func(f *fakeCluster, on bool)
	match  error
}{
	{"no limit", func(f *fakeCluster, on bool) { f.mu.noLimit = on }, transport.ErrNoLimit},
	{"permission denied", func(f *fakeCluster, on bool) {
		f.mu.refuse = nil
		if on {
			f.mu.refuse = fmt.Errorf("%w: client/app may not call Acquire", transport.ErrPermissionDenied)
		}
	}, transport.ErrPermissionDenied},
}

// refusedFor and liftedWithin bound the regression tests of a refused key:
// refused for refusedFor, it sends at most 1 + refusedFor/15s Acquires
// (the refusal backoff is 15–30 s), at least 15 s apart, and admits
// nothing; lifted, it admits within the 30 s backoff and the Acquire that
// asks again.
const (
	refusedFor   = 40 * time.Second
	liftedWithin = 31 * time.Second
)

// checkRefusedAsks checks the Acquires sent while the cluster refused:
// at least one, at most one per refusal backoff.
func checkRefusedAsks(t *testing.T, acq []acquireRecord) {
	t.Helper()
	if n := len(acq); n < 1 || n > 1+int(refusedFor/(15*time.Second)) {
		t.Errorf("%d Acquires in %v of a refused key, want 1 to %d", n, refusedFor, 1+int(refusedFor/(15*time.Second)))
	}
	for i := 1; i < len(acq); i++ {
		if d := acq[i].at - acq[i-1].at; d < 15*time.Second {
			t.Errorf("Acquires %d and %d of a refused key %v apart, want at least the refusal backoff's 15s", i-1, i, d)
		}
	}
}

// TestRefusedKeyIsAskedAgain is the regression test of a Limiter whose key
// the cluster refused (NoLimit, PermissionDenied) keeping the refusal for
// good: an operator's fix (a limit set, a role granted) took effect only
// when the app restarted. Now the key is asked again once per refusal
// backoff while it is used, admits nothing meanwhile, even failing open,
// and admits once the cluster accepts it.
func TestRefusedKeyIsAskedAgain(t *testing.T) {
	for _, refusal := range refusals {
		t.Run(refusal.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.set(func(f *fakeCluster) { refusal.refuse(f, true) })
				c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
				l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})
				admitted := 0
				for start := time.Now(); time.Since(start) < refusedFor; time.Sleep(100 * time.Millisecond) {
					if l.Allow() {
						admitted++
					}
				}
				if admitted > 0 {
					t.Errorf("%d Allows admitted while the cluster refused the key, failing open; want none", admitted)
				}
				if err := l.Wait(t.Context()); !errors.Is(err, refusal.match) {
					t.Errorf("Wait on a refused key = %v, want %v", err, refusal.match)
				}
				checkRefusedAsks(t, f.acquires())

				f.set(func(f *fakeCluster) { refusal.refuse(f, false) })
				lifted := time.Now()
				for !l.Allow() {
					if time.Since(lifted) > liftedWithin {
						t.Fatalf("no Allow admitted in %v after the cluster accepted the key; State %v", liftedWithin, l.State())
					}
					time.Sleep(100 * time.Millisecond)
				}
				if s := l.State(); s == client.StateInvalid {
					t.Errorf("State = %v after the cluster accepted the key", s)
				}
			})
		})
	}
}

// TestRefusedBudgetIsAskedAgain is TestRefusedKeyIsAskedAgain for a
// Budget: its token rules, its InFlight slot, or both, refused, admit
// nothing (TryReserve failing open, Reserve), are asked again once per
// refusal backoff, all in one Acquire, and admit once the cluster accepts
// them.
func TestRefusedBudgetIsAskedAgain(t *testing.T) {
	for _, refusal := range refusals {
		for _, tc := range tryBudgets() {
			t.Run(refusal.name+"/"+tc.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					f := newFake(t, 1)
					f.set(func(f *fakeCluster) { refusal.refuse(f, true) })
					c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
					b := c.Budget("scope", tc.rules...)
					admitted := 0
					for start := time.Now(); time.Since(start) < refusedFor; time.Sleep(100 * time.Millisecond) {
						if r, err := b.TryReserve(tc.cost); err == nil {
							admitted++
							r.Cancel()
						}
					}
					if admitted > 0 {
						t.Errorf("%d TryReserves admitted while the cluster refused the budget's keys, failing open; want none", admitted)
					}
					ctx, cancel := context.WithTimeout(t.Context(), time.Second)
					if _, err := b.Reserve(ctx, tc.cost); !errors.Is(err, refusal.match) {
						t.Errorf("Reserve on refused keys = %v, want %v", err, refusal.match)
					}
					cancel()
					checkRefusedAsks(t, f.acquires())

					f.set(func(f *fakeCluster) { refusal.refuse(f, false) })
					lifted := time.Now()
					for {
						r, err := b.TryReserve(tc.cost)
						if err == nil {
							r.Cancel()
							break
						}
						if time.Since(lifted) > liftedWithin {
							t.Fatalf("TryReserve = %v %v after the cluster accepted the budget's keys, want admitted", err, liftedWithin)
						}
						time.Sleep(100 * time.Millisecond)
					}
				})
			})
		}
	}
}

// TestInvalidRefusalIsNotAskedAgain: a request the cluster finds invalid
// (the app's own input) is refused however often it is asked: the key is
// asked once, and admits nothing.
func TestInvalidRefusalIsNotAskedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) {
			f.mu.refuse = &transport.InvalidError{Field: "items[0].limit", Reason: "differs from the key's"}
		})
		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second})
		b := c.Budget("scope", tryBudgets()[2].rules...)
		for start := time.Now(); time.Since(start) < time.Minute; time.Sleep(100 * time.Millisecond) {
			if l.Allow() {
				t.Fatal("Allow admitted a key the cluster found invalid")
			}
			if _, err := b.TryReserve(call); err == nil {
				t.Fatal("TryReserve admitted a budget the cluster found invalid")
			}
		}
		if n := len(f.acquires()); n != 2 {
			t.Errorf("%d Acquires in a minute of a Limiter and a Budget the cluster found invalid, want 2 (one each)", n)
		}
	})
}

// TestRefusedKeyHoldingALongLeaseIsAskedAgain is the regression test of a
// refused key that still held a long lease (MaxLease a minute) never being
// asked again: the re-ask past the refusal backoff started a refresh that
// found no refresh due (the lease held enough for the demand it knew),
// sent nothing, and left the ask claimed, so no later call could claim
// another, and the key stayed refused after the operator lifted the
// refusal. A claimed re-ask now always sends its Acquire (found by a
// review).
func TestRefusedKeyHoldingALongLeaseIsAskedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 100, Per: time.Second, Burst: 1000, MaxLease: time.Minute}))
		if !l.Allow() {
			t.Fatal("first Allow refused")
		}
		f.set(func(f *fakeCluster) {
			f.mu.refuse = fmt.Errorf("%w: client/app may not call Acquire", transport.ErrPermissionDenied)
		})
		if l.AllowN(900) {
			t.Fatal("AllowN(900) admitted by a refused key")
		}
		time.Sleep(31 * time.Second) // past the refusal backoff, the lease still live
		n0 := len(f.acquires())
		l.AllowN(900) // claims the re-ask
		time.Sleep(time.Second)
		if n := len(f.acquires()) - n0; n != 1 {
			t.Errorf("the re-ask past the backoff sent %d Acquires, want 1", n)
		}
		f.set(func(f *fakeCluster) { f.mu.refuse = nil })
		time.Sleep(40 * time.Second) // the lease has ended
		start := time.Now()
		for !l.Allow() {
			if time.Since(start) > time.Minute {
				t.Fatalf("no Allow admitted in a minute after the cluster accepted the key; State %v", l.State())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// TestRefusedBudgetWithAStrictRuleIsAskedAgain: a Budget whose token rule
// grants no leases (strict) beside an InFlight slot, its limit deleted
// while the cluster was full, is refused, and admits again once the limit
// is back: the slot and the strict rule are asked apart, and every path
// that records a rule's refusal sets the Budget's time to ask again
// (rejectLocked, rejectedRules).
func TestRefusedBudgetWithAStrictRuleIsAskedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.full = true })
		c := f.dial(t, client.WithFailurePolicy(client.FailOpen))
		b := c.Budget("scope",
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 6000, Per: time.Minute, Strict: true}},
			client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 5}})
		cost := client.Cost{Requests: 1}
		if r, err := b.TryReserve(cost); err != nil {
			t.Fatalf("TryReserve on a full cluster, failing open: %v", err)
		} else {
			r.Cancel()
		}
		// The backoff passes with the limit gone: the probe's refresh of
		// the strict rule is refused.
		f.set(func(f *fakeCluster) { f.mu.full, f.mu.noLimit = false, true })
		refused := false
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(100 * time.Millisecond) {
			if r, err := b.TryReserve(cost); err == nil {
				r.Cancel()
			} else if errors.Is(err, transport.ErrNoLimit) {
				refused = true
				break
			}
		}
		if !refused {
			t.Fatal("the budget never saw the cluster's NoLimit")
		}
		f.set(func(f *fakeCluster) { f.mu.noLimit = false })
		lifted := time.Now()
		for {
			r, err := b.TryReserve(cost)
			if err == nil {
				r.Cancel()
				break
			}
			if time.Since(lifted) > liftedWithin {
				t.Fatalf("TryReserve = %v %v after the cluster accepted the budget's keys, want admitted", err, liftedWithin)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
