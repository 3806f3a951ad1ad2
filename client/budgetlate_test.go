package client_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/limiter"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// shortRule is a budget rule on a bucket of 10 tokens per second, burst
// 10, MaxLease 200ms: an answer 1.05s late is far past its Λ.
var shortRule = client.Rule{Counts: client.InputTokens,
	Limit: client.Limit{Rate: 10, Per: time.Second, Burst: 10, MaxLease: 200 * time.Millisecond}}

// TestBudgetReservationAnsweredLate: a reservation decided by the
// cluster (a new Budget's first ones, or a rule this process uses too
// little to lease) is a lease of its own, the reservation's, of at most
// every key's MaxLease, spent whole when its answer arrives. Unlike a
// Limiter's central grant it was always bounded: its deadline counts from
// the first send, before the log time T that granted it, so an answer
// read after it is dead on arrival and given back, never spent later than
// Λ after T. Two Clients' Budgets on shortRule race as the Limiter's
// TestTokenBucketCentralDecisionAnsweredLate: A reserves 10 once the key
// is full and its answer comes late (slow, or lost and remembered by the
// dedup table for a retry), B reserves 10 once it has refilled; every
// window [a, a+Δ] holds at most B + r·(Δ+Λ). Admitting the own lease
// without its deadline check put 20 within 40ms, where the bound allows
// 12.4. A late answer is now also counted (Stats.Denied.LateAnswer), and
// TryReserve refuses at once rather than asking again.
func TestBudgetReservationAnsweredLate(t *testing.T) {
	raceLateReservations(t, lateReservations{
		inTime: 100 * time.Millisecond,
		rules:  []client.Rule{shortRule},
		cost:   client.Cost{InputTokens: 10},
		checkAsk: func(t *testing.T, a *pb.AcquireRequest) {
			if a.GetTtlNs() == 0 {
				t.Errorf("A's reservation asked ttl 0; want its own lease")
			}
		},
	})
}

// noLeaseKey defines key in the fake as a bucket that grants no leases
// (MaxLease 0: a strict bucket whose reserve ⌈r·Λ⌉ is its whole burst),
// as another client may have defined it first: a Budget's rule for the key
// is then not what the cluster keeps.
func (f *fakeCluster) noLeaseKey(t *testing.T, key string, rate int64, per time.Duration) {
	t.Helper()
	tb, err := limiter.NewTokenBucket(rate, per, rate)
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeCluster) {
		f.mu.keys[key] = &fakeKey{limit: rate, bucket: tb, floor: math.MinInt64}
	})
}

// centralRules are a Budget whose requests key the cluster keeps as one
// that grants no leases (noLeaseKey), beside shortRule: every reservation
// of it is a central grant (ttl 0), spent when its answer arrives.
var centralRules = []client.Rule{
	{Counts: client.Requests, Limit: client.Limit{Rate: 1000, Per: time.Second}},
	shortRule,
}

// TestBudgetCentralReservationAnsweredLate is the regression test of a
// Budget's central grant spent late: when one of a reservation's keys
// grants no leases, the cluster answers the whole reservation as a
// central grant (ttl 0) and its other keys' tokens too are spent when the
// answer arrives. A leasing key's bound counts them as spent at most its
// Λ after their log time; the Budget admitted them however late the
// answer came (the race of TestBudgetReservationAnsweredLate: 20 within
// 40ms on shortRule's key, where B + r·(Δ+Λ) allows 12.4, and 20 within
// at most 0.56s, where it allows at most 17.6, for an answer the dedup
// table remembered 0.5s or more after T). Now such a reservation
// asks as a Limiter's central decision does (ttl 0, span_ns, span_buckets),
// the cluster answers its leasing keys' least MaxLease, and an answer read
// after it is refused and counted.
func TestBudgetCentralReservationAnsweredLate(t *testing.T) {
	raceLateReservations(t, lateReservations{
		inTime: 150 * time.Millisecond,
		setup: func(t *testing.T, f *fakeCluster) {
			f.noLeaseKey(t, "s/requests", 1000, time.Second)
		},
		rules: centralRules,
		cost:  client.Cost{Requests: 1, InputTokens: 10},
		checkAsk: func(t *testing.T, a *pb.AcquireRequest) {
			if a.GetTtlNs() != 0 || a.GetSpanNs() != int64(transport.MaxLeaseTTL) || !a.GetSpanBuckets() {
				t.Errorf("A's reservation asked ttl %v, span %v, span_buckets %v; want a central decision (ttl 0) with the longest span, for buckets",
					time.Duration(a.GetTtlNs()), time.Duration(a.GetSpanNs()), a.GetSpanBuckets())
			}
		},
	})
}

// lateReservations is what the late-reservation tests vary: the Budgets'
// rules, what A and B each reserve and what A's reservation must ask.
type lateReservations struct {
	inTime   time.Duration                            // the reply delay of the case answered in time
	setup    func(t *testing.T, f *fakeCluster)       // if set, defines keys before the Clients dial
	rules    []client.Rule                            // the Budgets' rules, shortRule's key among them
	cost     client.Cost                              // what A and B each reserve
	checkAsk func(t *testing.T, a *pb.AcquireRequest) // checks the Acquire of A's reservation
}

// raceLateReservations plays the late cases (raceLateReservation) with
// two Clients' Budgets as lr says, once shortRule's key is full, and
// checks that the admissions keep within its B + r·(Δ+Λ).
func raceLateReservations(t *testing.T, lr lateReservations) {
	runLateCases(t, []lateCase{
		{name: "answered within its max lease", reply: lr.inTime, bAt: 1100 * time.Millisecond, wantA: true},
		{name: "answered past its max lease", reply: 1050 * time.Millisecond, bAt: 1010 * time.Millisecond},
		{name: "remembered for a retry", lose: 500 * time.Millisecond, bAt: 1060 * time.Millisecond},
	}, func(t *testing.T, f *fakeCluster, tc lateCase) {
		if lr.setup != nil {
			lr.setup(t, f)
		}
		ca := f.dial(t)
		a := ca.Budget("s", lr.rules...)
		b := f.dial(t).Budget("s", lr.rules...)
		warmUp(t, a, b)
		time.Sleep(time.Second) // the key is full again
		before := len(f.acquires())
		admitted := raceLateReservation(t, f, ca, a, b, lr.cost, tc)
		lr.checkAsk(t, f.acquires()[before].req)
		checkBucketBound(t, admitted, 10, 10, time.Second, shortRule.Limit.MaxLease)
	})
}

// TestBudgetCentralReservationOldClusterAdmitsAsBefore: a cluster that
// does not answer a token bucket's span (below the command level of
// SpanBuckets, or a build that predates it) answers a central reservation
// with ttl 0, and the Budget admits it however late, as before: it cannot
// tell how late is too late.
func TestBudgetCentralReservationOldClusterAdmitsAsBefore(t *testing.T) {
	onOldClusters(t, func(t *testing.T, f *fakeCluster) {
		f.noLeaseKey(t, "s/requests", 1000, time.Second)
		c := f.dial(t)
		b := c.Budget("s", centralRules...)
		warmUp(t, b)
		f.set(func(f *fakeCluster) { f.mu.replyDelay = 1050 * time.Millisecond })
		r, err := b.TryReserve(client.Cost{Requests: 1, InputTokens: 5})
		if err != nil {
			t.Fatalf("TryReserve answered 1.05s late by an old cluster = %v, want a reservation (admitted as before)", err)
		}
		r.Settle(t.Context(), client.Cost{Requests: 1, InputTokens: 5})
		if got := c.Stats().Denied.LateAnswer; got != 0 {
			t.Errorf("Stats().Denied.LateAnswer = %d, want 0", got)
		}
	})
}

// TestReserveOnAKeyAnsweredTooLateBacksOff: on a key whose MaxLease is
// shorter than its answers take, every reservation the cluster grants is
// answered too late to spend, and each took tokens from the key (a lease
// given back after it expired returns nothing). Reserve asked again at
// once, as fast as the cluster answered (25 Acquires in 500ms with 20ms
// answers), and counted nothing. It now backs off as after a failure, as
// Limiter.Wait does, and counts each in Stats.Denied.LateAnswer; both for
// a reservation's own lease and for a central one.
func TestReserveOnAKeyAnsweredTooLateBacksOff(t *testing.T) {
	short := client.Rule{Counts: client.InputTokens,
		Limit: client.Limit{Rate: 1000, Per: time.Second, Burst: 1000, MaxLease: 10 * time.Millisecond}}
	for _, tc := range []struct{ central, try bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		central, try := tc.central, tc.try
		name := map[bool]string{false: "own lease", true: "central"}[central] + map[bool]string{false: ", Reserve", true: ", TryReserve"}[try]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				rules := []client.Rule{short}
				if central {
					f.noLeaseKey(t, "s/requests", 1000, time.Second)
					rules = []client.Rule{centralRules[0], short}
				}
				c := f.dial(t)
				b := c.Budget("s", rules...)
				warmUp(t, b)
				f.set(func(f *fakeCluster) { f.mu.replyDelay = 20 * time.Millisecond })
				before := len(f.acquires())
				if try {
					// A caller of TryReserve that waits its RetryAfter.
					for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
						_, err := b.TryReserve(client.Cost{Requests: 1, InputTokens: 1})
						var re *client.RuleError
						if !errors.As(err, &re) || !errors.Is(err, client.ErrDenied) || re.RetryAfter <= 0 {
							t.Fatalf("TryReserve = %v; want a RuleError matching ErrDenied with a RetryAfter", err)
						}
						time.Sleep(re.RetryAfter)
					}
				} else {
					ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
					defer cancel()
					if _, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 1}); err == nil {
						t.Fatal("Reserve = nil: a grant answered after the key's MaxLease was spent")
					}
				}
				checkLateAnswersBackedOff(t, c, name, len(f.acquires())-before)
				// The fake answers an Acquire that Reserve stopped waiting
				// for 20ms after it applied; it must not be left sleeping
				// when the bubble ends.
				time.Sleep(20 * time.Millisecond)
			})
		})
	}
}

// warmUp makes one small reservation on each Budget, answered at once, and
// settles it: a Budget whose key grants no leases learns it there.
func warmUp(t *testing.T, bs ...*client.Budget) {
	t.Helper()
	cost := client.Cost{Requests: 1, InputTokens: 1}
	for _, b := range bs {
		r, err := b.TryReserve(cost)
		if err != nil {
			t.Fatalf("warm-up TryReserve = %v", err)
		}
		if err := r.Settle(t.Context(), cost); err != nil {
			t.Fatalf("warm-up Settle = %v", err)
		}
	}
}

// raceLateReservation plays tc from now with Budgets, as raceLateAnswer
// does with Limiters: A (of Client ca) and B each TryReserve cost. It
// checks A's outcome (a refusal matching ErrDenied), A's LateAnswer
// count and, with lose, that a retry was answered from the dedup table,
// and returns the admissions of cost's InputTokens, one per token, as
// times from its start. Reservations are settled at their cost when it
// ends.
func raceLateReservation(t *testing.T, f *fakeCluster, ca *client.Client, a, b *client.Budget, cost client.Cost, tc lateCase) []time.Duration {
	t.Helper()
	var (
		mu   sync.Mutex // A and B reserve on goroutines of their own
		held []client.Reservation
	)
	reserve := func(budget *client.Budget, r *lateRace) error {
		res, err := budget.TryReserve(cost)
		if err == nil {
			r.admit(cost.InputTokens)
			mu.Lock()
			held = append(held, res)
			mu.Unlock()
		}
		return err
	}
	admitted := playLateCase(t, f, ca, tc,
		func(r *lateRace) {
			err := reserve(a, r)
			if ok := err == nil; ok != tc.wantA {
				t.Errorf("A's TryReserve(%+v) = %v, want admitted %v", cost, err, tc.wantA)
			}
			if err != nil && !errors.Is(err, client.ErrDenied) {
				t.Errorf("A's TryReserve(%+v) = %v, want an error matching ErrDenied", cost, err)
			}
		},
		func(r *lateRace) {
			if err := reserve(b, r); err != nil {
				t.Errorf("B's TryReserve(%+v) at %v = %v, want a reservation", cost, r.elapsed(), err)
			}
		})
	for _, res := range held {
		if err := res.Settle(context.Background(), cost); err != nil {
			t.Errorf("Settle = %v", err)
		}
	}
	return admitted
}
