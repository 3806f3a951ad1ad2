// Package limiter holds Leasehold's rate-limiting algorithms as pure functions of
// their state and a caller-supplied time.
//
// Three algorithms live here: a token bucket in GCRA form ([TokenBucket]), a
// conservative sliding window ([SlidingWindow]) and a concurrency limit
// ([Concurrency]). Each is split into an immutable configuration, built and
// validated once, and a small state value that the caller owns and stores. The
// replicated state machine (package fsm) keeps millions of states and one shared
// configuration per distinct limit, which is why the two are separate.
//
// A token bucket can also go below empty: [TokenBucket.Charge] accounts for
// tokens already spent, into debt down to a cap; [TokenBucket.Lower] and
// [TokenBucket.BlockUntil] take tokens away (never give any). All three only
// push the bucket's one number forward, so they need no state of their own.
//
// Invariants, each tested:
//
//   - No clock. Every method takes now, log time in nanoseconds, from the caller.
//     Time that goes backwards is clamped, never a panic, and never yields more
//     tokens than the latest time already seen.
//   - Integer arithmetic only, overflow-checked (saturating), so replicas on any
//     architecture compute identical states. Where a division is inexact the
//     rounding always goes against the caller: costs round up, refunds round down.
//   - No allocation, goroutine, IO or logging on any Take/Check/Return path.
//   - A denial is a [Decision] with Allowed false, never an error. Errors come only
//     from constructors given an impossible configuration.
//
// Package limiter imports nothing from this module.
package limiter
