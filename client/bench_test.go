package client_test

import (
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/leasehold/leasehold/client"
)

// warmLimiter returns a Limiter holding a lease far larger than a benchmark
// can spend, so that every Allow takes the fast path.
func warmLimiter(b *testing.B) *client.Limiter {
	f := newFake(b, 1)
	c := f.dial(b, client.WithLeaseTTL(time.Minute))
	l := client.LeasingForTest(c.Limiter("bench", client.Limit{Rate: 1 << 40, Per: time.Second, MaxLease: time.Minute}))
	if !l.Allow() {
		b.Fatal("Allow = false")
	}
	return l
}

// BenchmarkAllowWarmLease is Allow on a warm lease, one goroutine.
func BenchmarkAllowWarmLease(b *testing.B) {
	l := warmLimiter(b)
	b.ReportAllocs()
	for b.Loop() {
		if !l.Allow() {
			b.Fatal("Allow = false on a warm lease")
		}
	}
}

// BenchmarkXTimeRateAllow is golang.org/x/time/rate's Allow, one goroutine,
// for comparison.
func BenchmarkXTimeRateAllow(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	for b.Loop() {
		if !lim.Allow() {
			b.Fatal("Allow = false")
		}
	}
}

// BenchmarkAllowWarmLeaseParallel is Allow on a warm lease from GOMAXPROCS
// goroutines.
func BenchmarkAllowWarmLeaseParallel(b *testing.B) {
	l := warmLimiter(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !l.Allow() {
				b.Error("Allow = false on a warm lease")
				return
			}
		}
	})
}

// BenchmarkXTimeRateAllowParallel is x/time/rate's Allow from GOMAXPROCS
// goroutines.
func BenchmarkXTimeRateAllowParallel(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !lim.Allow() {
				b.Error("Allow = false")
				return
			}
		}
	})
}

// BenchmarkAllowWarmLeaseParallel64 is Allow on a warm lease from
// 32·GOMAXPROCS goroutines: more spenders than stripes.
func BenchmarkAllowWarmLeaseParallel64(b *testing.B) {
	l := warmLimiter(b)
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !l.Allow() {
				b.Error("Allow = false on a warm lease")
				return
			}
		}
	})
}

// BenchmarkXTimeRateAllowParallel64 is x/time/rate's Allow from
// 32·GOMAXPROCS goroutines.
func BenchmarkXTimeRateAllowParallel64(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1<<40), 1<<40)
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !lim.Allow() {
				b.Error("Allow = false")
				return
			}
		}
	})
}
