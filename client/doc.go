// Package client is Leasehold's Go SDK: rate limits shared by every process
// that uses the same key, decided by a Leasehold cluster, with the hot path
// in-process.
//
//	c, err := client.Dial(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"},
//		client.WithTLS("data/tls/client-app.pem", "data/tls/client-app-key.pem", "data/tls/ca.pem"))
//	if err != nil { ... }
//	defer c.Close()
//	l := c.Limiter("tenant-42:gpt-4.1", client.Limit{Rate: 100, Per: time.Second, Burst: 100})
//	if l.Allow() { ... }          // or l.Wait(ctx), l.AllowN(n), l.WaitN(ctx, n)
//
// A [Limiter] leases batches of tokens from the cluster and spends them
// locally: Allow costs a clock read and a compare-and-swap while a valid
// lease holds tokens, and a refresh, sized from the Limiter's recent rate of
// use, starts in the background at a low-water mark. A Limiter leases only
// where a lease pays: a new one, a key this process rarely touches, and a
// key whose limit is too small to share in leases among the clients using
// it are decided by the cluster, a round trip per request, concurrent
// requests on a key sharing one ([StateCentral]), with no token held for
// later. When the cluster cannot be reached, a Limiter spends what it holds
// until its leases expire, then follows its [FailurePolicy].
//
// A [Budget] is several limits on one scope (an AI provider's key and
// model, say), each a [Rule] counting one dimension of a call's [Cost]:
// requests, input, output or all tokens, calls in flight, spend. Reserve
// takes a call's estimate from every rule or from none, and the
// [Reservation]'s Settle gives back what the call did not use and charges
// what it used beyond, as debt up to each rule's MaxDebt. Each rule keeps
// the bound of its token bucket, plus its MaxDebt, on what the cluster
// charged, over every process sharing the scope (usage forgiven beyond
// the debt cap is not limited: reserve the most a call can use). On warm
// leases a Reserve and its Settle make no round trip. Package
// client/guard reserves and settles for an AI provider's HTTP client.
//
// Invariants, each tested:
//
//   - A lease granted for ttl is spent only while the Client's monotonic
//     clock, read in the same call that spends, is before
//     sent + ttl·(1−ρ)/(1+ρ), where sent is when the request that got it was
//     first sent and ρ the allowed clock-rate error ([WithClockDrift]). No
//     timer expires a lease: a process paused past a lease's life wakes up
//     to an expired lease. So a client never spends a token the cluster
//     already counts as expired, and the cluster's over-admission bound
//     holds: at most Burst + Rate·(Δ + MaxLease) in any interval Δ for a
//     token bucket, Burst + Rate·Δ for a Strict one, Rate in any window for
//     a sliding window.
//   - Every token admitted comes from a grant: admitted = granted − given
//     back, exactly, under any concurrency.
//   - A retried request (unknown outcome: lost leadership, lost connection,
//     timeout) carries the same client_id and seq as the first attempt, so
//     the cluster applies it at most once.
//   - A lease dies (its tokens swapped to 0) before its unused tokens are
//     given back with Release, so none is both spent and given back.
//   - Allow never waits on the network while a valid lease holds the tokens,
//     and never while the cluster is believed unreachable. It refuses only
//     on the cluster's word (a denial or a short lease's pace, for as long as
//     it said) or its failure policy: never for want of a lease the cluster
//     had room for.
//   - Every goroutine belongs to a Client; Close gives back unused tokens,
//     then waits for all of them.
//
// A cluster that serves TLS wants a certificate: pass [WithTLS] with the
// files `leasehold certs client NAME` wrote (a client certificate may
// acquire and release; setting limits needs an operator's). The Limit a
// Limiter or Budget declares defines a key's limit only if the key has
// none, and a node started with --client-inline-limits=false refuses that
// to a client certificate: there, only keys an operator set work. A key
// the cluster refuses to this certificate (transport.ErrPermissionDenied,
// ErrUnauthenticated) or names no limit for (transport.ErrNoLimit) admits
// nothing beyond what leases granted before the refusal still hold,
// whatever the failure policy, as an invalid key does; but an
// operator can lift those refusals (a role granted, a certificate rotated,
// limits applied), so the key is asked again every 15–30 s while it is
// used, and works once the cluster accepts it, without a restart. A key or
// request the cluster finds invalid (transport.ErrInvalid: the app's own
// input) is never asked again.
// A cluster that holds as many keys or client sessions as its operator
// allows (serve --max-keys, --max-sessions) refuses a key or a Client it
// does not hold yet (transport.ErrFull): the Limiter follows its failure
// policy, as when the cluster is unreachable, and asks again every few
// seconds. A fail-closed Wait, or a Budget's Reserve, that gives up returns
// an error that carries the cluster's answer, naming the cap and its flag
// (a Wait's reads leasehold: key "k": cluster full: ...; a Reserve's names
// the budget, or is a *RuleError naming the rule whose policy refused), and
// matches
// transport.ErrFull, ErrUnavailable (the failure policy decided) and the
// context's error.
//
// Client, Limiter, Budget, Reservation and every method on them are safe
// for concurrent use.
//
// Package client imports transport (for its generated gRPC code, errors and
// request limits), limiter (the fallback share's local bucket) and
// internal/pki (WithTLS's certificates) from this module, and never cluster, fsm, hashicorp or bbolt: a user's binary does not
// pull in a Raft server. See DESIGN.md for the decisions behind it.
package client
