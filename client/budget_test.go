package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/transport"
)

// aiRules are the rules of the example, without its InFlight and
// Spend rules: requests, input and output tokens a minute.
func aiRules() []client.Rule {
	return []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 500, Per: time.Minute}},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 200_000, Per: time.Minute}},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 50_000, Per: time.Minute}},
	}
}

// bigRules are rules far above what the tests ask: 100 requests, 30k input
// and 20k output tokens a second.
func bigRules() []client.Rule {
	return []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 6000, Per: time.Minute}},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 1_800_000, Per: time.Minute}},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 1_200_000, Per: time.Minute}},
	}
}

var call = client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 1000}

// On warm leases a Reserve and its Settle make no round trip: with every
// Acquire held by the cluster, reservations still come and go. The first
// reservation refreshes every rule in one Acquire of three items.
func TestBudgetWarmLeasesNoRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("openai:org-7:gpt-4.1", bigRules()...))
		ctx := t.Context()
		used := client.Cost{Requests: 1, InputTokens: 1187, OutputTokens: 342}
		for i := range 30 { // 10 a second: the leases grow to that demand
			r, err := b.Reserve(ctx, call)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Settle(ctx, used); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				acq := f.acquires()
				if len(acq) != 1 || len(acq[0].req.GetItems()) != 3 || acq[0].req.GetTtlNs() == 0 {
					dumpAcquires(t, f)
					t.Fatalf("acquires = %d; want one lease request of 3 items", len(acq))
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		warm := len(f.acquires())
		sent := len(f.releases()) + len(f.charges())
		release := f.holdAcquires()
		for range 5 {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r, err := b.Reserve(ctx, call)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Settle(ctx, used); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(f.releases()) + len(f.charges()) - sent; n != 0 {
			t.Errorf("%d releases and charges for settles below their reservations on live leases; want 0", n)
		}
		release()
		t.Logf("%d acquires for 30 reservations at 10/s; held %v", warm, client.BudgetHeldForTest(b))
		if warm > 8 {
			dumpAcquires(t, f)
			t.Errorf("%d acquires for 30 reservations at 10/s; want a few refreshes", warm)
		}
	})
}

// A cost larger than a rule's burst fails at once, naming the rule.
func TestBudgetExceedsLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s", aiRules()...)
		_, err := b.Reserve(t.Context(), client.Cost{Requests: 1, InputTokens: 10, OutputTokens: 60_000})
		var re *client.RuleError
		if !errors.Is(err, client.ErrExceedsLimit) || !errors.As(err, &re) || re.Counts != client.OutputTokens || re.Key != "s/output-tokens" {
			t.Fatalf("err = %v; want ErrExceedsLimit naming output-tokens", err)
		}
		if n := len(f.acquires()); n != 0 {
			t.Errorf("acquires = %d, want 0", n)
		}
		_ = context.Background
	})
}

func dumpAcquires(t *testing.T, f *fakeCluster) {
	for _, a := range f.acquires() {
		t.Logf("acquire at %v: %v", a.at, a.req)
	}
}

// A Cost that leaves Requests 0 is one call: "N requests a minute" written
// with Cost{InputTokens, OutputTokens} limits the calls (before, such a
// cost took nothing from a Requests rule, which then admitted every call),
// and a Settle with the provider's usage, Requests 0 too, keeps the call
// counted rather than refunding it.
func TestCostRequestsZeroCountsOneCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s",
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 3, Per: time.Minute}},
			client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 100_000, Per: time.Minute}})
		estimate := client.Cost{InputTokens: 500, OutputTokens: 1000}
		for i := range 3 {
			r, err := b.TryReserve(estimate)
			if err != nil {
				t.Fatalf("reservation %d: %v", i, err)
			}
			if err := r.Settle(t.Context(), client.Cost{InputTokens: 480, OutputTokens: 300}); err != nil {
				t.Fatalf("settle %d: %v", i, err)
			}
		}
		_, err := b.TryReserve(estimate)
		var re *client.RuleError
		if !errors.Is(err, client.ErrDenied) || !errors.As(err, &re) || re.Counts != client.Requests {
			t.Errorf("fourth call in a minute of 3 requests: err = %v; want ErrDenied by the requests rule", err)
		}
		if got := f.level("s/requests"); got != 0 {
			t.Errorf("s/requests holds %d after 3 settled calls, want 0 (each counted once)", got)
		}
	})
}

// A Budget's rules are checked with messages about what was written: an
// empty scope is refused (its keys, "/tokens" and the like, would be shared
// by every Budget whose scope was left empty); an InFlight rule's MaxLease
// out of range says its own default (10s), not a token bucket's (2s); and
// two InFlight rules are one error, not also "the same dimension over the
// same period".
func TestBudgetRuleErrorsSayWhatWasWritten(t *testing.T) {
	slot := func(ml time.Duration) client.Rule {
		return client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 5, MaxLease: ml}}
	}
	for _, tc := range []struct {
		name    string
		scope   string
		rules   []client.Rule
		want    []string // in the error
		notWant []string
	}{
		{name: "empty scope", rules: aiRules(), want: []string{"scope"}},
		{name: "in-flight max lease", scope: "s", rules: []client.Rule{slot(2 * time.Minute)},
			want: []string{"max_lease", "10s"}, notWant: []string{"2s)"}},
		{name: "two in-flight rules", scope: "s", rules: []client.Rule{slot(0), slot(0)},
			want: []string{"at most one in-flight rule"}, notWant: []string{"same dimension"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t)
				_, err := c.Budget(tc.scope, tc.rules...).TryReserve(call)
				var inv *transport.InvalidError
				if !errors.As(err, &inv) {
					t.Fatalf("TryReserve = %v, want an *transport.InvalidError", err)
				}
				t.Log(err)
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				for _, w := range tc.notWant {
					if strings.Contains(err.Error(), w) {
						t.Errorf("error %q says %q", err, w)
					}
				}
			})
		})
	}
}

// Reserve and Limiter.WaitN with a context already ended fail with its
// error and take nothing, warm leases or not, as x/time/rate's WaitN does
// (before, they succeeded on warm leases and failed on cold ones).
func TestEndedContextIsCheckedFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
		l := client.LeasingForTest(c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second}))
		ctx := t.Context()
		for range 10 { // warms the leases
			r, err := b.Reserve(ctx, call)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Settle(ctx, call); err != nil {
				t.Fatal(err)
			}
			if err := l.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		held, stats := client.BudgetHeldForTest(b), c.Stats()
		for k, n := range held { // enough for small (below) on any of 16 stripes
			if k == "s/requests" && n < 1 || k != "s/requests" && n < 16*10 {
				t.Fatalf("%s holds %d: not warm enough for the test (held %v)", k, n, held)
			}
		}
		if ls, _ := c.LimiterStats("k"); ls.TokensHeld == 0 {
			t.Fatalf("the Limiter holds no lease: not warm enough for the test")
		}
		ended, cancel := context.WithCancel(ctx)
		cancel()
		small := client.Cost{Requests: 1, InputTokens: 10, OutputTokens: 10} // within one stripe of each lease
		if _, err := b.Reserve(ended, small); !errors.Is(err, context.Canceled) {
			t.Errorf("Reserve with an ended context on warm leases = %v, want context.Canceled", err)
		}
		if got := client.BudgetHeldForTest(b); !mapsEqual(held, got) {
			t.Errorf("held %v before, %v after a Reserve with an ended context", held, got)
		}
		if err := l.WaitN(ended, 1); !errors.Is(err, context.Canceled) {
			t.Errorf("WaitN with an ended context on a warm lease = %v, want context.Canceled", err)
		}
		if got := c.Stats(); got.Reserved != stats.Reserved || got.Admitted.Leased != stats.Admitted.Leased {
			t.Errorf("Stats reserved %d and leased %d after, %d and %d before; want nothing taken",
				got.Reserved, got.Admitted.Leased, stats.Reserved, stats.Admitted.Leased)
		}
	})
}
