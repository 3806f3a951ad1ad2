package client_test

import (
	"errors"
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A Spend rule is a rule like the others, its amounts derived from the
// tokens through its price: reserved at the estimate's price, refunded or
// charged at the usage's.
func TestSpendRule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		b := f.dial(t).Budget("s",
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 500, Per: time.Minute}},
			// $50 a day; $2 per million input tokens, $8 per million output.
			client.Rule{Counts: client.Spend, Limit: client.Limit{Rate: 50_000_000, Per: 24 * time.Hour},
				Price: client.Price{InputPerMillion: 2_000_000, OutputPerMillion: 8_000_000}},
		)
		ctx := t.Context()
		r, err := b.Reserve(ctx, call) // 1200·2 + 1000·8 = 10400 µUSD
		if err != nil {
			t.Fatal(err)
		}
		if it := f.acquires()[0].req.GetItems(); len(it) != 2 || it[1].GetKey() != "s/spend" || it[1].GetCount() != 10_400 {
			t.Fatalf("acquire items = %v; want the spend key for 10400", it)
		}
		if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1187, OutputTokens: 342}); err != nil { // 2374 + 2736
			t.Fatal(err)
		}
		if rels := f.releases(); len(rels) != 1 || !slices.Equal(rels[0].GetUnused(), []int64{0, 10_400 - 5110}) {
			t.Fatalf("releases = %v; want [0 5290]", rels)
		}
		r, err = b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1, OutputTokens: 2000}); err != nil { // 2 + 16000
			t.Fatal(err)
		}
		// The excess came from a lease the spend rule holds by now (its
		// stock is deep), or a charge: either way, once the Budget gives
		// back what it holds, the key has given exactly what was spent.
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if got := f.net("s/spend"); got != 5110+16_002 {
			t.Errorf("spend taken for good = %d µUSD, want %d", got, 5110+16_002)
		}
	})
}

// Invalid rules make a Budget that admits nothing and says why, every
// problem at once.
func TestBudgetInvalidRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		b := f.dial(t).Budget("s",
			client.Rule{Counts: client.Spend, Limit: client.Limit{Rate: 10, Per: time.Hour}},
			client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 2}},
			client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 2}},
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 10, Per: time.Hour, Algorithm: client.SlidingWindow}},
			client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 0, Per: time.Hour}},
		)
		_, err := b.Reserve(t.Context(), call)
		var ie interface{ Error() string }
		if err == nil || !errors.As(err, &ie) {
			t.Fatalf("Reserve = %v; want the rules' problems", err)
		}
		for _, want := range []string{"rules[0].price", "rules[2].counts", "rules[3].limit.algorithm", "rules[4]"} {
			if !contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
		if n := len(f.acquires()); n != 0 {
			t.Errorf("acquires = %d, want 0", n)
		}
	})
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// With the cluster unreachable and no lease, each rule's failure policy
// decides: FailClosed refuses (TryReserve at once; Reserve when its context
// ends, with ErrUnavailable), FailOpen admits, and settling what a policy
// admitted charges nothing.
func TestBudgetFailurePolicies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		closed := f.dial(t).Budget("closed", aiRules()...)
		open := f.dial(t, client.WithFailurePolicy(client.FailOpen)).Budget("open", aiRules()...)
		f.set(func(f *fakeCluster) { f.mu.down = true })
		ctx := t.Context()
		if _, err := closed.TryReserve(call); !errors.Is(err, client.ErrDenied) {
			t.Errorf("fail closed, TryReserve = %v; want a denial", err)
		}
		short, cancel := contextWithTimeout(ctx, 3*time.Second)
		defer cancel()
		if _, err := closed.Reserve(short, call); !errors.Is(err, client.ErrUnavailable) {
			t.Errorf("fail closed, Reserve = %v; want ErrUnavailable once its context ends", err)
		}
		r, err := open.Reserve(ctx, call)
		if err != nil {
			t.Fatalf("fail open, Reserve = %v", err)
		}
		f.set(func(f *fakeCluster) { f.mu.down = false })
		if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 5000, OutputTokens: 5000}); err != nil {
			t.Fatal(err)
		}
		if n := len(f.charges()); n != 0 {
			t.Errorf("charges for a reservation the policy admitted = %d, want 0", n)
		}
	})
}

// A call's spend is rounded up to a whole micro-USD, and saturates rather
// than overflow.
func TestPriceSpend(t *testing.T) {
	cheap := client.Price{InputPerMillion: 150_000, OutputPerMillion: 600_000} // $0.15 and $0.60 per million
	dear := client.Price{InputPerMillion: 15_000_000, OutputPerMillion: 75_000_000}
	for _, tt := range []struct {
		price client.Price
		cost  client.Cost
		want  int64
	}{
		{cheap, client.Cost{InputTokens: 1}, 1},                  // 0.15 µUSD
		{cheap, client.Cost{InputTokens: 1_000_000}, 150_000},    // exactly
		{cheap, client.Cost{InputTokens: 7, OutputTokens: 3}, 3}, // 1.05 + 1.8 = 2.85
		{cheap, client.Cost{OutputTokens: 1 << 62}, 2767011611056432743},
		{dear, client.Cost{OutputTokens: 1 << 62}, math.MaxInt64}, // overflow
		{dear, client.Cost{InputTokens: math.MaxInt64, OutputTokens: math.MaxInt64}, math.MaxInt64},
		{dear, client.Cost{Requests: 5}, 0}, // requests cost nothing
	} {
		if got := client.SpendForTest(tt.price, tt.cost); got != tt.want {
			t.Errorf("spend of %+v at %+v = %d, want %d", tt.cost, tt.price, got, tt.want)
		}
	}
}
