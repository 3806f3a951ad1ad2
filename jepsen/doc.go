//go:build unix

// Package jepsen is Leasehold's chaos test: it runs real `leasehold serve`
// nodes and client workers that use the real SDK, injects faults from
// outside (kill -9, SIGSTOP/SIGCONT, partitions, the leader's answers held
// and delivered late, clock faults, membership changes: a node added,
// removed, a dead one replaced), records what
// every process did in one history, and checks that history. It builds on
// Unix only: its faults are POSIX signals and its clock CLOCK_MONOTONIC.
//
// The history (history.jsonl, see Event) is stamped with one reference
// clock, the host's CLOCK_MONOTONIC. Operations are invokes paired with
// their completions (Pair); an operation whose outcome is unknown (info, or
// never completed) may have taken effect at any time after its invoke.
//
// The checkers are pure functions of a history and the run's limits
// (KeySpec, keys.json): no clock, no IO, no goroutines. Each returns a
// Result; CheckAll runs them all and Valid combines them:
//
//   - CheckHistory: the history is well formed.
//   - CheckAdmissions, CheckGrants: the over-admission bound of DESIGN.md
//     invariant 7 on what clients admitted and on what the cluster granted.
//     A central admission counts from its answer, not its invoke, so
//     that a central answer spent after its span (a sliding window's, a
//     token bucket's MaxLease) shows: the workload's sw-central key (10
//     per 1s, decided centrally) and the stall-answers fault are there
//     for it. Not a strict token bucket with no leases (Λ = 0), whose
//     central answers are always later than its bound covers.
//   - CheckLeaseExpiry: no lease spent after it expired.
//   - CheckLeaseBudget: no lease spent beyond its grant, or by another
//     process, or after its release.
//   - CheckIdempotency: no request applied twice, no lease id granted twice.
//   - CheckDurability: the envelopes over windows spanning a full-cluster
//     outage (every member down; members follow the history's joins and
//     leaves).
//   - CheckLogTime: log time never goes back and never runs faster than
//     the reference clock.
//   - CheckAvailability: failover gaps, recovery and efficiency, with
//     optional bounds.
//   - CheckBudget: the bound with debt, B + D + r·(Δ+Λ), on what a
//     Budget's reservations charged to each rule (reserve, settle above or
//     below the estimate, cancel), and each reservation ended at most once.
//
// Invariants of the checkers, each tested with known-bad histories:
//
//   - An operation counts inside a window only if its whole [invoke,
//     complete] interval lies inside, and an operation that may have
//     loosened a bound (a release, an unknown outcome) counts wherever it
//     may have applied. Timing noise can hide a violation but never
//     invent one. (A window's central admission is narrowed to what the
//     history proves: it began no earlier than its answer.)
//   - Bounds are compared in exact integer arithmetic (128-bit, checked
//     against math/big for range), never in floating point; floats are
//     used only for reported ratios.
//   - The checkers are independent of the system under test: package
//     jepsen never imports limiter or fsm (internal/archtest enforces it);
//     it knows the limits only from KeySpec and the bounds only from
//     DESIGN.md.
//
// The processes are internal/proc's (the same harness as the end-to-end
// tests and `leasehold cluster`); what is the chaos harness's own is here:
// the fault-injecting proxies, the clock knob files, the workers' progress
// and the harness checks.
//
// Imports: the standard library and, for the harness, the module's client,
// transport, internal/proc and internal/chaosclock packages; never limiter
// or fsm. The checkers use the standard library only.
package jepsen
