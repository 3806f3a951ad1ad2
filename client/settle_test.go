package client_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A new Budget decides its rules centrally: a reservation is one Acquire of
// every rule, its own lease. Settling below the reservation releases each
// rule's unused tokens; above, it charges the excess as debt; a second
// Settle charges nothing.
func TestSettleCentralBelowAboveTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s", aiRules()...)
		ctx := t.Context()
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		acq := f.acquires()
		if len(acq) != 1 || len(acq[0].req.GetItems()) != 3 || acq[0].req.GetTtlNs() == 0 {
			t.Fatalf("acquires = %v; want one reservation lease of 3 items", acq)
		}
		actual := client.Cost{Requests: 1, InputTokens: 1000, OutputTokens: 1500}
		if err := r.Settle(ctx, actual); err != nil {
			t.Fatal(err)
		}
		rels := f.releases()
		if len(rels) != 1 || !slices.Equal(rels[0].GetUnused(), []int64{0, 200, 0}) {
			t.Fatalf("releases = %v; want one with unused [0 200 0]", rels)
		}
		ch := f.charges()
		if len(ch) != 1 || len(ch[0].GetItems()) != 1 || ch[0].GetItems()[0].GetKey() != "s/output-tokens" ||
			ch[0].GetItems()[0].GetTokens() != 500 {
			t.Fatalf("charges = %v; want one of 500 output tokens", ch)
		}
		want := map[string]int64{"s/requests": 499, "s/input-tokens": 199_000, "s/output-tokens": 48_500}
		check := func(when string) {
			t.Helper()
			for k, v := range want {
				if got := f.level(k); got != v {
					t.Errorf("%s: %s holds %d, want %d", when, k, got, v)
				}
			}
		}
		check("after settle")
		for range 2 {
			if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 9000, OutputTokens: 9000}); err != nil {
				t.Fatal(err)
			}
			if err := r.Cancel(); err != nil {
				t.Fatal(err)
			}
		}
		if n, m := len(f.releases()), len(f.charges()); n != 1 || m != 1 {
			t.Errorf("after settling again: %d releases, %d charges; want 1 and 1", n, m)
		}
		check("after settling again")
	})
}

// On a pool lease, a settle above the reservation takes the excess from
// what the process holds, charges the rest as debt down to the rule's
// MaxDebt (its burst), and forgives what goes beyond.
func TestSettleAboveIntoDebtCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		rules := []client.Rule{
			{Counts: client.Requests, Limit: client.Limit{Rate: 100_000, Per: time.Minute}},
			{Counts: client.OutputTokens, Limit: client.Limit{Rate: 1200, Per: time.Minute}},
		}
		b := client.BudgetLeasingForTest(c.Budget("s", rules...))
		ctx := t.Context()
		r, err := b.Reserve(ctx, client.Cost{Requests: 1, OutputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		held := client.BudgetHeldForTest(b)["s/output-tokens"]
		if err := r.Settle(ctx, client.Cost{Requests: 1, OutputTokens: 3000}); err != nil {
			t.Fatal(err)
		}
		ch := f.charges()
		if len(ch) != 1 || ch[0].GetItems()[0].GetTokens() != 2000-held {
			t.Fatalf("charges = %v; want one of 2000 less the %d held", ch, held)
		}
		if got := f.level("s/output-tokens"); got != -1200 {
			t.Errorf("output tokens level = %d, want -1200 (the debt cap: the burst)", got)
		}
		f.mu.Lock()
		debt := f.ledgerLocked("s/output-tokens").charged
		f.mu.Unlock()
		if st := c.Stats(); st.Charged != uint64(2000-held) || st.Forgiven != uint64(2000-held-debt) || debt >= 2000-held {
			t.Errorf("Stats: charged %d, forgiven %d; want %d and %d (beyond the %d the cap let the cluster charge)",
				st.Charged, st.Forgiven, 2000-held, 2000-held-debt, debt)
		}
		if got := client.BudgetHeldForTest(b)["s/output-tokens"]; got != 0 {
			t.Errorf("held after the excess = %d, want 0 (taken first)", got)
		}
	})
}

// A retried Settle charges once: when the Charge's answer is lost, the
// Settle's context ends, and the caller settles again, the cluster sees
// one charge (the same seq), and the second Settle reports its outcome.
func TestSettleRetriedChargesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := c.Budget("s", aiRules()...)
		ctx := t.Context()
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		f.set(func(f *fakeCluster) { f.mu.loseCharges = 1 << 30 })
		short, cancel := context.WithTimeout(ctx, time.Millisecond)
		defer cancel()
		if err := r.Settle(short, client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 1700}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Settle with its answers lost = %v; want the context's deadline", err)
		}
		f.set(func(f *fakeCluster) { f.mu.loseCharges = 2 })
		if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1, OutputTokens: 1}); err != nil {
			t.Fatalf("Settle again = %v; want the first one's outcome, nil", err)
		}
		if ch := f.charges(); len(ch) != 1 || ch[0].GetItems()[0].GetTokens() != 700 {
			t.Errorf("charges applied = %v, want one of 700", ch)
		}
		f.mu.Lock()
		retries := len(f.mu.retries)
		f.mu.Unlock()
		if retries < 1 {
			t.Errorf("the lost charge was not retried with its seq")
		}
	})
}

// A Settle of a reservation whose record has been reused for another one
// (the handle's generation is older) does nothing to the new one.
func TestSettleAfterRecycleTouchesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
		ctx := t.Context()
		r1, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := r1.Settle(ctx, call); err != nil {
			t.Fatal(err)
		}
		r2, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		before := client.BudgetHeldForTest(b)
		if err := r1.Settle(ctx, client.Cost{}); err != nil { // would refund all of r2's
			t.Fatal(err)
		}
		if err := r1.Cancel(); err != nil {
			t.Fatal(err)
		}
		if after := client.BudgetHeldForTest(b); !mapsEqual(before, after) {
			t.Errorf("a stale Settle changed what is held: %v -> %v", before, after)
		}
		if err := r2.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 3000}); err != nil {
			t.Fatal(err)
		}
		if n := len(f.charges()); n > 1 {
			t.Errorf("charges = %d; want at most r2's", n)
		}
	})
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Cancel gives every rule its tokens back: into the pool lease, with no
// round trip.
func TestCancelGivesTokensBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
		ctx := t.Context()
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Settle(ctx, call); err != nil {
			t.Fatal(err)
		}
		before := client.BudgetHeldForTest(b)
		n := len(f.acquires())
		r, err = b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Cancel(); err != nil {
			t.Fatal(err)
		}
		if after := client.BudgetHeldForTest(b); !mapsEqual(before, after) {
			t.Errorf("held %v before, %v after a reservation cancelled", before, after)
		}
		if len(f.acquires()) != n || len(f.releases()) != 0 {
			t.Errorf("a warm reserve and cancel talked to the cluster")
		}
	})
}

// A Settle after the reservation expired says so: its lease ended (its TTL
// passed with no KeepAlive), so its unused tokens stay charged, and Settle
// returns ErrExpired naming them rather than nil (the user's report: 9000
// reserved on a key of 10k an hour, Settle(0) returned nil, and a later
// TryReserve of 5000 was refused for ~24 minutes). What the call used
// beyond its reservation is still charged.
func TestSettleAfterExpiryReportsErrExpired(t *testing.T) {
	for _, tc := range []struct {
		name    string
		leasing bool // a pool lease; else the reservation's own (a new Budget's central rules)
		rule    client.Rule
		reserve client.Cost
		settle  client.Cost
		cancel  bool   // Cancel rather than Settle
		lost    string // in the error: the tokens not given back
		charged int64  // the excess charged
	}{
		{name: "own lease", rule: client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 10_000, Per: time.Hour}},
			reserve: client.Cost{OutputTokens: 9000}, lost: "9000"},
		{name: "pool lease", leasing: true, rule: client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 1_200_000, Per: time.Minute}},
			reserve: client.Cost{OutputTokens: 1000}, settle: client.Cost{OutputTokens: 200}, lost: "800"},
		{name: "above the reservation", rule: client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 10_000, Per: time.Hour}},
			reserve: client.Cost{OutputTokens: 1000}, settle: client.Cost{OutputTokens: 1500}, charged: 500},
		{name: "cancelled", rule: client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 10_000, Per: time.Hour}},
			reserve: client.Cost{OutputTokens: 9000}, cancel: true, lost: "9000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t, client.WithReservationTTL(time.Second))
				b := c.Budget("s", tc.rule)
				if tc.leasing {
					b = client.BudgetLeasingForTest(b)
				}
				ctx := t.Context()
				r, err := b.Reserve(ctx, tc.reserve)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(5 * time.Second) // past its TTL and any lease's life: the keeper lets go
				if err := r.KeepAlive(ctx); !errors.Is(err, client.ErrExpired) {
					t.Fatalf("KeepAlive = %v, want ErrExpired", err)
				}
				end := func() error { return r.Settle(ctx, tc.settle) }
				if tc.cancel {
					end = r.Cancel
				}
				err = end()
				if !errors.Is(err, client.ErrExpired) {
					t.Fatalf("Settle after expiry = %v, want ErrExpired", err)
				}
				t.Log(err)
				if tc.lost != "" && !strings.Contains(err.Error(), tc.lost) {
					t.Errorf("Settle after expiry = %q; want it to name the %s tokens not given back", err, tc.lost)
				}
				var charged int64
				for _, ch := range f.charges() {
					for _, it := range ch.GetItems() {
						charged += it.GetTokens()
					}
				}
				if charged != tc.charged {
					t.Errorf("charged %d, want %d (the excess, as before)", charged, tc.charged)
				}
				if n := c.Stats().Expired; n != 1 {
					t.Errorf("Stats().Expired = %d, want 1", n)
				}
				if err := end(); err != nil {
					t.Errorf("ended again: %v, want nil (it does nothing)", err)
				}
			})
		})
	}
}
