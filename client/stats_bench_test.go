package client_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/promcollector"
)

// scrapeEvery is how often the "on" benchmarks gather the collector: far
// more often than a Prometheus server would (15s is usual), so that the
// scrape's own cost (Stats takes each Limiter's lock) shows if it can.
const scrapeEvery = 10 * time.Millisecond

// scraped registers a promcollector of c and gathers it every scrapeEvery
// until the benchmark ends.
func scraped(b *testing.B, c *client.Client) {
	col, err := promcollector.New(c, promcollector.Config{Keys: []string{"bench"}})
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(scrapeEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := reg.Gather(); err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
	b.Cleanup(func() { close(stop); wg.Wait() })
}

// BenchmarkCollector is the hot paths with the collector registered and
// scraped (on) and without it (off), in the same run: Allow on a warm lease,
// and a Reserve and its Settle on warm leases.
func BenchmarkCollector(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run("AllowWarmLease/"+name, func(b *testing.B) {
			f := newFake(b, 1)
			c := f.dial(b, client.WithLeaseTTL(time.Minute))
			l := client.LeasingForTest(c.Limiter("bench", client.Limit{Rate: 1 << 40, Per: time.Second, MaxLease: time.Minute}))
			if !l.Allow() {
				b.Fatal("Allow = false")
			}
			if on {
				scraped(b, c)
			}
			b.ReportAllocs()
			for b.Loop() {
				if !l.Allow() {
					b.Fatal("Allow = false on a warm lease")
				}
			}
		})
		b.Run("ReserveSettleWarm/"+name, func(b *testing.B) {
			f := newFake(b, 1)
			c := f.dial(b, client.WithLeaseTTL(time.Minute))
			huge := client.Limit{Rate: 1 << 40, Per: time.Second, MaxLease: time.Minute}
			bud := client.BudgetLeasingForTest(c.Budget("bench",
				client.Rule{Counts: client.Requests, Limit: huge},
				client.Rule{Counts: client.InputTokens, Limit: huge},
				client.Rule{Counts: client.OutputTokens, Limit: huge},
			))
			ctx := context.Background()
			r, err := bud.Reserve(ctx, call)
			if err != nil {
				b.Fatal(err)
			}
			r.Cancel()
			if on {
				scraped(b, c)
			}
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
		})
	}
}

// BenchmarkStats is one Stats call on a Client of 1000 Limiters holding no
// lease: what a scrape costs the process.
func BenchmarkStats(b *testing.B) {
	f := newFake(b, 1)
	c := f.dial(b)
	for i := range 1000 {
		c.Limiter(fmt.Sprint("k", i), client.Limit{Rate: 10, Per: time.Second})
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Stats()
	}
}
