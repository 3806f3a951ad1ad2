// Package bench is the load driver behind `leasehold bench`: closed-loop
// workers that call a rate limiter as fast as it answers, far above its
// limit, on one key (the hot key) or a few, and measure what users care
// about — decisions per second, Allow latency, tokens admitted against the
// over-admission envelope, and Raft writes per 1000 admitted.
//
// The same workload runs against Leasehold through the real SDK (package
// client; one Client per simulated process, lease or central mode) and
// against the usual Redis + Lua token bucket (package redislua), where each
// client passes its own clock reading. Local starts a private redis-server
// and a private cluster of `leasehold serve` processes (internal/proc) on
// free loopback ports for `leasehold bench compare`, and stops them by PID.
//
// A sliding window (Workload.Window) runs the same way, against the SDK or
// the usual Redis sorted-set window (redislua.WindowScript); its runs record
// every call, check that no window shorter than W admitted more than L
// (WindowEnvelope.Worst, counting a call only if its whole [Inv, Ret] lies
// inside) and report what share of L each window admitted (WindowShares).
//
// Invariants, each tested:
//
//   - The envelope (DESIGN.md invariant 7, B + r·(Δ + Λ) per key) is
//     computed here, in integers, never by package limiter or fsm: the bench
//     checks the cluster, it does not agree with it. Δ spans from before the
//     first call to after the last return, so every admission lies inside.
//     So is a sliding window's bound, L in any window, on the recorded calls.
//   - Histogram quantiles are never below the true quantile and at most 1/32
//     above it; recording neither allocates nor sorts. Workers time one call
//     in Config.SampleEvery, so that reading the clock does not dominate a
//     leased Allow of a few tens of nanoseconds.
//   - Every goroutine a run starts has returned when Run returns; every
//     process Local starts is stopped by Local.Stop.
//   - A Leasehold run in which the SDK's failure policy decided any call
//     (client.Stats: admitted by Fallback, denied as Unreachable) is not
//     valid (Report.NotValid): its report says so first, the tables show
//     none of its figures and no ratio uses it, and CheckValid fails.
//
// Package bench imports client, transport and redislua from this module,
// never cluster, fsm or limiter.
package bench
