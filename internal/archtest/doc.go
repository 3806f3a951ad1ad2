// Package archtest holds tests that keep Leasehold's architecture honest. It has
// no code of its own: everything lives in its _test.go files, and nothing may
// import it.
//
// Two checks run over the module's non-test Go source, parsed with go/parser so
// they need no build, no network and no external tool:
//
//   - Import direction. Imports point one way (cmd → cluster → fsm → limiter,
//     cmd → transport, client → transport + limiter). The rules, one row per
//     (package subtree, forbidden import prefix), mirror the package table in
//     STYLE.md; a package that does not exist yet is simply skipped.
//   - Purity. limiter and fsm are deterministic state machines: they never read
//     the clock or sleep (time.Now, time.Since, time.Sleep, timers, ...), never
//     import math/rand or os, and never start a goroutine. Replicas must compute
//     identical state from identical commands.
//
// Each check is a function from one parsed file to its violations, and is itself
// tested against small known-bad and known-good sources: a checker that cannot
// fail proves nothing.
//
// Package archtest may import only the standard library.
package archtest
