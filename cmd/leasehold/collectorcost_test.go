package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/bench"
)

// TestBenchScrapesTheSDKCollector: with Hooks.Scrape set, a lease-mode run
// registers client/promcollector in every client and gathers it while the
// load runs (the cost BenchmarkCollectorCost measures is really paid).
func TestBenchScrapesTheSDKCollector(t *testing.T) {
	eps, _ := startCluster(t, 3, nil)
	w := bench.Workload{Clients: 2, Concurrency: 1, Keys: 1, Duration: time.Second, Rate: 1000, Burst: 1000, Per: time.Second}
	rep, err := bench.RunLeasehold(context.Background(), eps, bench.ModeLease, w, bench.Hooks{Scrape: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Two registries, about 20 ticks in a second; a loaded machine may
	// skip ticks, but not most of them.
	if rep.Scrapes < 2*5 {
		t.Fatalf("%d gathers in a 1 s run with 2 clients scraped every 50 ms", rep.Scrapes)
	}
	if rep.Over > 0 {
		t.Fatalf("over-admitted %d", rep.Over)
	}
}

// BenchmarkCollectorCost measures what the SDK's Prometheus collector costs
// the hot path (issue 16: lease mode with it registered vs not, goal ≥
// 0.97): bench's lease-mode workload (8 clients, one key, limit far above
// demand, so every Allow is a leased one) against one in-process cluster,
// with every client's collector gathered each second (as a Prometheus
// would, every 15 s or so, only more often) and without, alternating which
// goes first, LEASEHOLD_COLLECTOR_ROUNDS rounds of
// LEASEHOLD_COLLECTOR_SECONDS each (LEASEHOLD_COLLECTOR_INTERVAL_MS sets the
// scrape interval); it logs and reports the ratio of the medians.
//
// Measured 2026-12-06 (2-core VM, quiet): 0.60-0.68, the same with a
// scrape every second or every 50 ms, and the same with Client.Stats alone
// in place of the Prometheus gather: the goal is not met, and the cause is
// not the gather's own work (a CPU profile shows neither Stats nor Gather).
// client's BenchmarkCollector, one Limiter in one process, sees no cost.
func BenchmarkCollectorCost(b *testing.B) {
	rounds := envInt(b, "LEASEHOLD_COLLECTOR_ROUNDS", 5)
	secs := envInt(b, "LEASEHOLD_COLLECTOR_SECONDS", 4)
	eps, _ := startCluster(b, 3, nil)
	w := bench.Workload{Clients: 8, Concurrency: 1, Keys: 1, Duration: time.Duration(secs) * time.Second,
		Rate: 1_000_000_000, Burst: 1_000_000_000, Per: time.Second}
	rates := map[bool][]float64{}
	for b.Loop() {
		for r := range rounds {
			for _, on := range []bool{r%2 == 1, r%2 == 0} {
				h := bench.Hooks{}
				if on {
					h.Scrape = time.Duration(envInt(b, "LEASEHOLD_COLLECTOR_INTERVAL_MS", 1000)) * time.Millisecond
				}
				rep, err := bench.RunLeasehold(context.Background(), eps, bench.ModeLease, w, h)
				if err != nil {
					b.Fatalf("collector=%v: %v", on, err)
				}
				rate := rep.Result.DecisionsPerSecond()
				rates[on] = append(rates[on], rate)
				b.Logf("round %d collector=%-5v %12.0f decisions/s, %d gathers", r+1, on, rate, rep.Scrapes)
			}
		}
	}
	off, on := median(rates[false]), median(rates[true])
	b.Logf("median decisions/s: collector off %.0f, on %.0f, ratio %s", off, on, fmt.Sprintf("%.3f", on/off))
	b.ReportMetric(on/off, "collector-ratio")
}
