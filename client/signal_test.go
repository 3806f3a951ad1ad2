package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// Block stops the budget in this process at once, held leases included,
// and in every other process within Λ (its leases' life): the cluster
// grants its keys nothing until the block ends.
func TestBlockStopsTheBudgetEverywhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		ctx := t.Context()
		a := client.BudgetLeasingForTest(f.dial(t).Budget("s", bigRules()...))
		b := client.BudgetLeasingForTest(f.dial(t).Budget("s", bigRules()...))
		for _, x := range []*client.Budget{a, b} {
			r, err := x.Reserve(ctx, call)
			if err != nil {
				t.Fatal(err)
			}
			r.Settle(ctx, call)
		}
		if err := a.Block(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := a.TryReserve(call)
		var re *client.RuleError
		if !errors.As(err, &re) || re.Counts != 0 || re.RetryAfter != 30*time.Second {
			t.Fatalf("TryReserve just after Block = %v; want the budget blocked for 30s", err)
		}
		synctest.Wait()
		rs := f.restricts()
		if len(rs) != 1 || len(rs[0].GetItems()) != 3 || rs[0].GetItems()[0].GetBlockedForNs() != int64(30*time.Second) {
			t.Fatalf("restricts = %v; want one blocking the 3 keys for 30s", rs)
		}
		// Blocks that the one sent covers send nothing more.
		for range 100 {
			a.Block(ctx, time.Second)
		}
		synctest.Wait()
		if n := len(f.restricts()); n != 1 {
			t.Errorf("restricts after 100 shorter blocks = %d, want 1", n)
		}
		// The other process spends what it holds, then stops.
		var last time.Duration
		for time.Since(start) < 30*time.Second {
			if r, err := b.TryReserve(call); err == nil {
				last = time.Since(start)
				r.Settle(ctx, call)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if last > 2*time.Second {
			t.Errorf("the other process reserved %v after the block; want within its 2s leases", last)
		}
		time.Sleep(time.Second)
		if _, err := a.Reserve(ctx, call); err != nil {
			t.Errorf("Reserve after the block = %v", err)
		}
	})
}

// Reserve waits out a block, or fails at once if its deadline comes first.
func TestReserveWaitsOutABlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		b := f.dial(t).Budget("s", bigRules()...)
		ctx := t.Context()
		b.Block(ctx, 10*time.Second)
		short, cancel := contextWithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := b.Reserve(short, call); !errors.Is(err, client.ErrWouldExceedDeadline) {
			t.Fatalf("Reserve with 5s of a 10s block = %v; want ErrWouldExceedDeadline", err)
		}
		start := time.Now()
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		r.Cancel()
		if d := time.Since(start); d < 10*time.Second {
			t.Errorf("Reserve returned after %v of a 10s block", d)
		}
	})
}

// Lower is cheap: a thousand calls make one Restrict at once, and those in
// the next second one more at its end, with the latest value plus what each
// rule refilled while it waited; a remaining above a rule's burst sends
// nothing; Tokens lowers both token rules.
func TestLowerCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		b := f.dial(t).Budget("s", bigRules()...)
		ctx := t.Context()
		for i := range 1000 {
			if err := b.Lower(ctx, client.Tokens, int64(20_000-i), time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		rs := f.restricts()
		if len(rs) != 1 || len(rs[0].GetItems()) != 2 || rs[0].GetItems()[1].GetRemaining() > 20_000 {
			t.Fatalf("restricts = %v; want one of both token keys", rs)
		}
		for i := range 1000 {
			b.Lower(ctx, client.Tokens, int64(10_000-i), time.Minute)
		}
		synctest.Wait()
		if n := len(f.restricts()); n != 1 {
			t.Fatalf("restricts within the second = %d, want 1", n)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		rs = f.restricts()
		// Said a second ago: 9001 plus a second of each rule's refill
		// (1.8M and 1.2M a minute).
		if len(rs) != 2 || rs[1].GetItems()[0].GetRemaining() != 9001+30_000 || rs[1].GetItems()[1].GetRemaining() != 9001+20_000 {
			t.Fatalf("restricts = %v; want a second with the latest value and a second's refill, 39001 and 29001", rs)
		}
		if got := f.level("s/input-tokens"); got > 9001+30_000 {
			t.Errorf("input tokens = %d after lowering to 9001 a second ago", got)
		}
		time.Sleep(time.Second)
		b.Lower(ctx, client.Requests, 1_000_000, time.Minute)
		synctest.Wait()
		if n := len(f.restricts()); n != 2 {
			t.Errorf("restricts after a remaining above the burst = %d, want 2", n)
		}
	})
}

func contextWithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// A Restrict that waited (signalInterval) for the remaining a response
// reported must not take from the key what the rule refilled meanwhile: a
// remaining said before a pause in the calls, sent at the pause's end, took
// the pause's whole refill (ai-demo, 2026-12-06: 13,252 of a row's 400,000
// tokens, up to 8,150 in one Restrict, with the provider's only caller
// going through the Budget). Lowered at once, the key holds the remaining
// and then refills; lowered a second late, it must hold the same.
func TestLowerSentLateTakesNoRefill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		rules := []client.Rule{{Counts: client.Tokens, Limit: client.Limit{Rate: 60_000, Per: time.Minute}}}
		b := f.dial(t).Budget("s", rules...)
		ctx := t.Context()
		b.Lower(ctx, client.Tokens, 50_000, time.Minute) // sent at once
		synctest.Wait()
		b.Lower(ctx, client.Tokens, 2_000, time.Minute) // waits for the interval
		said := time.Now()
		time.Sleep(time.Second)
		synctest.Wait()
		rs := f.restricts()
		if len(rs) != 2 {
			t.Fatalf("restricts = %d, want 2", len(rs))
		}
		want := 2_000 + int64(time.Since(said)/time.Millisecond) // 1000 a second
		if got := f.level("s/tokens"); got < want {
			t.Errorf("tokens = %d a second after Lower said 2000; want at least %d (the rule's refill since)", got, want)
		}
	})
}
