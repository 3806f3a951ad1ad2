package client_test

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/leasehold/leasehold/client"
)

// warmBudget returns a Budget of three rules (requests, input and output
// tokens) holding leases far larger than a benchmark can spend, so that
// every Reserve and Settle takes the fast path.
func warmBudget(b *testing.B) *client.Budget {
	f := newFake(b, 1)
	c := f.dial(b, client.WithLeaseTTL(time.Minute))
	huge := client.Limit{Rate: 1 << 40, Per: time.Second, MaxLease: time.Minute}
	bud := client.BudgetLeasingForTest(c.Budget("bench",
		client.Rule{Counts: client.Requests, Limit: huge},
		client.Rule{Counts: client.InputTokens, Limit: huge},
		client.Rule{Counts: client.OutputTokens, Limit: huge},
	))
	// Demand far above what a benchmark spends: leases of about 2^40/8.
	r, err := bud.Reserve(context.Background(), call)
	if err != nil {
		b.Fatal(err)
	}
	r.Cancel()
	return bud
}

var settled = client.Cost{Requests: 1, InputTokens: 1187, OutputTokens: 342}

// BenchmarkReserveSettleWarm is a Reserve and its Settle (below the
// reservation: a refund) on warm leases, one goroutine.
func BenchmarkReserveSettleWarm(b *testing.B) {
	bud := warmBudget(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := bud.Reserve(ctx, call)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Settle(ctx, settled); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReserveSettleWarmParallel is BenchmarkReserveSettleWarm from
// GOMAXPROCS goroutines.
func BenchmarkReserveSettleWarmParallel(b *testing.B) {
	bud := warmBudget(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := bud.Reserve(ctx, call)
			if err != nil {
				b.Error(err)
				return
			}
			if err := r.Settle(ctx, settled); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkXTimeRateReserveN is golang.org/x/time/rate's ReserveN of a
// call's tokens, one goroutine, for comparison: one limit where the Budget
// has three, and nothing given back.
func BenchmarkXTimeRateReserveN(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	for b.Loop() {
		if r := lim.ReserveN(time.Now(), 2200); !r.OK() {
			b.Fatal("not OK")
		}
	}
}

// BenchmarkXTimeRateReserveNCancel is x/time/rate's ReserveN and its
// Cancel (the closest to a reservation settled at nothing).
func BenchmarkXTimeRateReserveNCancel(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	for b.Loop() {
		r := lim.ReserveN(time.Now(), 2200)
		if !r.OK() {
			b.Fatal("not OK")
		}
		r.Cancel()
	}
}

// BenchmarkXTimeRateReserveNParallel is x/time/rate's ReserveN from
// GOMAXPROCS goroutines.
func BenchmarkXTimeRateReserveNParallel(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := lim.ReserveN(time.Now(), 2200); !r.OK() {
				b.Error("not OK")
				return
			}
		}
	})
}

// BenchmarkReserveSettleInFlight is a Reserve and its Settle on warm leases
// with an InFlight rule: the slot is the cluster's, so each reservation
// makes an Acquire and its Settle a Release (here to the in-process fake
// over bufconn: the cost of the two round trips' client side, not of a
// Raft commit).
func BenchmarkReserveSettleInFlight(b *testing.B) {
	f := newFake(b, 1)
	c := f.dial(b, client.WithLeaseTTL(time.Minute))
	huge := client.Limit{Rate: 1 << 40, Per: time.Second, MaxLease: time.Minute}
	bud := client.BudgetLeasingForTest(c.Budget("bench",
		client.Rule{Counts: client.Requests, Limit: huge},
		client.Rule{Counts: client.InputTokens, Limit: huge},
		client.Rule{Counts: client.OutputTokens, Limit: huge},
		client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 1 << 20}},
	))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := bud.Reserve(ctx, call)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Settle(ctx, settled); err != nil {
			b.Fatal(err)
		}
	}
}
