package client

import (
	"sync/atomic"
	"time"
)

// Stats is what a Client's Limiters and Budgets did since Dial (the
// counters, which only grow) and hold now (the gauges). Read it with
// [Client.Stats]; the client/promcollector package exports it to
// Prometheus. Counters are per Client, never per key: see
// [Client.LimiterStats] for one key.
type Stats struct {
	// Admitted counts the tokens Allow, AllowN, TakeN, Wait and WaitN
	// admitted, by where they came from: a lease held (Leased), a decision
	// of the cluster made for the call (Central), or the failure policy
	// while the cluster was unreachable (Fallback). Tokens, not calls: the
	// lease path counts nothing as it admits (a shared counter would cost
	// it a locked instruction per call); Leased is what the leases of the
	// Client's Limiters gave, read from the leases at Stats.
	Admitted BySource
	// Denied counts the Allow, AllowN and TakeN calls that returned false,
	// by why. Wait and WaitN errors are not counted, but LateAnswer counts
	// every grant a call refused as late, on whatever call, Budget
	// reservations' included. A lease a background refresh (a Limiter's, a
	// Budget pool's) finds already expired on arrival is given back and
	// not counted.
	Denied Denials
	// Reserved and ReserveRefused count Budget.Reserve and TryReserve calls
	// that returned a reservation, and those that returned an error.
	Reserved, ReserveRefused uint64
	// Settled and Canceled count the reservations ended by Settle and by
	// Cancel (the first call on each; later ones do nothing and are not
	// counted).
	Settled, Canceled uint64
	// Expired counts the reservations ended (Settle or Cancel) after their
	// lease had ended, each returning an error matching ErrExpired: their
	// unused tokens stayed charged.
	Expired uint64
	// Charged counts the tokens used beyond a reservation that no lease
	// held covered, charged to the cluster as debt (Charge requests).
	// Forgiven counts those of them the cluster did not charge, as the
	// rule's key owed its MaxDebt already: tokens used and not limited
	// (see Rule.MaxDebt).
	Charged, Forgiven uint64
	// Requests counts the requests sent to the cluster, by call, each once
	// however many times it was retried; Errors counts those that ended in
	// an error, by call and kind.
	Requests Calls
	Errors   CallErrors
	// FallbackTime is the time Limiters spent following their failure
	// policy (from the first request the policy decided to the cluster's
	// next answer), summed over Limiters; an episode is counted when it
	// ends, or when its Limiter is closed or forgotten.
	FallbackTime time.Duration

	// Limiters counts the Limiters of the Client now, by State (Budgets'
	// rules not included).
	Limiters LimiterStates
	// Budgets is the number of open Budgets.
	Budgets int
	// LeasesHeld and TokensHeld are the valid leases held now and their
	// unspent tokens, over Limiters and Budgets' rules.
	LeasesHeld int
	TokensHeld int64
	// LeaseTimeLeft is, over the Limiters and Budgets' rules that hold a
	// valid lease, the least time left until the last of a Limiter's
	// leases expires: how soon some Limiter must hear from the cluster to
	// keep admitting from a lease. 0 if no lease is held.
	LeaseTimeLeft time.Duration
}

// BySource counts admitted tokens by where they came from.
type BySource struct {
	Leased, Central, Fallback uint64
}

// Denials counts refused calls by why: the cluster said no (now, or
// recently and the SDK remembered: Cluster); the cluster did not answer,
// or refused the key or Client as full (transport.ErrFull: it holds its
// --max-keys keys or --max-sessions clients), no lease held covered the
// call and the failure policy did not admit it (Unreachable); the Limiter admits nothing (closed, invalid key or
// limit, more tokens than the limit ever admits: Unusable); or the cluster
// granted a call's central decision, or a Budget reservation's own lease,
// but its answer came after the span it may be spent in (a sliding
// window's span, a token bucket's MaxLease), so spending it could admit
// more than the bound (LateAnswer; client/DESIGN.md, "A central decision
// answered late" and "A Budget's reservation answered late").
type Denials struct {
	Cluster, Unreachable, Unusable, LateAnswer uint64
}

// Calls counts requests to the cluster by call.
type Calls struct {
	Acquire, Release, Charge, Extend, Restrict uint64
}

// CallErrors counts failed requests by call and kind.
type CallErrors struct {
	Acquire, Release, Charge, Extend, Restrict ErrorKinds
}

// ErrorKinds counts errors by kind: the cluster rejected the request
// (invalid, no limit, not permitted: retrying cannot help), or it could not
// be reached or did not answer in time (Unavailable).
type ErrorKinds struct {
	Rejected, Unavailable uint64
}

// LimiterStates counts Limiters by State.
type LimiterStates struct {
	Leased, Central, Fallback, Invalid int
}

// LimiterStats is what one Limiter holds now.
type LimiterStats struct {
	State State
	// LeasesHeld and TokensHeld are its valid leases and their unspent
	// tokens.
	LeasesHeld int
	TokensHeld int64
	// LeaseTimeLeft is the time until the last of its leases expires; 0
	// if none is held.
	LeaseTimeLeft time.Duration
	// InFallback is how long the failure policy has been deciding for it;
	// 0 when it is not.
	InFallback time.Duration

	leased uint64 // tokens spent from its leases, held or not
}

// The counters of the paths that must stay cheap are striped like a
// lease's tokens: a goroutine adds to the stripe its stack address picks
// (stackHash), so spenders on different cores rarely share a cache line.
// Stats sums the stripes.
const statStripes = maxStripes

// hotStat names a striped counter.
type hotStat int

const (
	statCentral hotStat = iota
	statFallback
	statDeniedCluster
	statDeniedUnreachable
	statDeniedUnusable
	statDeniedLate
	statReserved
	statReserveRefused
	statSettled
	statCanceled
	statCharged
	statExpired
	statForgiven
	numHotStats
)

// statStripe is one stripe of every striped counter: 16 counters, two
// whole cache lines.
type statStripe struct {
	n [16]atomic.Uint64
}

var _ [16 - numHotStats]struct{} // numHotStats fits a stripe

// call names a request kind, for Requests and Errors.
type call int

const (
	callAcquire call = iota
	callRelease
	callCharge
	callExtend
	callRestrict
	numCalls
)

// stats is a Client's counters. Every method is safe for concurrent use
// and allocates nothing.
type stats struct {
	hot        [statStripes]statStripe
	requests   [numCalls]atomic.Uint64
	rejected   [numCalls]atomic.Uint64
	unavail    [numCalls]atomic.Uint64
	fallbackNs atomic.Int64
	// closedLeased counts the tokens spent from the leases of Limiters
	// closed or forgotten; leasedSeen is the most Stats reported as
	// Admitted.Leased, which it never reports less than (see Stats).
	closedLeased, leasedSeen atomic.Uint64
}

// add adds n to counter k on the calling goroutine's stripe.
func (s *stats) add(k hotStat, n uint64) {
	s.hot[stackHash(0)&(statStripes-1)].n[k].Add(n)
}

// sum returns counter k over every stripe.
func (s *stats) sum(k hotStat) uint64 {
	var n uint64
	for i := range s.hot {
		n += s.hot[i].n[k].Load()
	}
	return n
}

// request counts a request of kind k that ended with err.
func (s *stats) request(k call, err error) {
	s.requests[k].Add(1)
	switch {
	case err == nil:
	case rejected(err):
		s.rejected[k].Add(1)
	default:
		s.unavail[k].Add(1)
	}
}

// errs returns the errors of call k.
func (s *stats) errs(k call) ErrorKinds {
	return ErrorKinds{Rejected: s.rejected[k].Load(), Unavailable: s.unavail[k].Load()}
}

// fallbackEndedLocked counts the fallback episode of l that ends at now,
// if one is under way, and ends it.
func (l *Limiter) fallbackEndedLocked(now int64) {
	if since := l.mu.fallbackSince; since >= 0 {
		l.c.stats.fallbackNs.Add(max(0, now-since))
		l.mu.fallbackSince = -1
	}
}

// Stats returns what c's Limiters and Budgets did since Dial and hold now.
// The counters are read without a lock, each atomically but not all at one
// instant; the gauges and the leased tokens lock each Limiter in turn, and
// the walk allocates one slice of them. It is meant for a metrics scrape
// (BenchmarkStats: about 0.2 ms for 1000 Limiters), not for a request's
// path; the counting it reads allocates nothing and takes no lock. Safe
// for concurrent use, also after Close.
//
// Admitted.Leased never goes back between calls: a Limiter closed while
// Stats walks may be missed by that walk, and Stats then reports the
// previous value. A token spent in the instant its expired lease is being
// dropped may go uncounted.
func (c *Client) Stats() Stats {
	s := &c.stats
	st := Stats{
		Admitted: BySource{Leased: s.closedLeased.Load(), Central: s.sum(statCentral), Fallback: s.sum(statFallback)},
		Denied: Denials{Cluster: s.sum(statDeniedCluster), Unreachable: s.sum(statDeniedUnreachable),
			Unusable: s.sum(statDeniedUnusable), LateAnswer: s.sum(statDeniedLate)},
		Reserved:       s.sum(statReserved),
		ReserveRefused: s.sum(statReserveRefused),
		Settled:        s.sum(statSettled),
		Canceled:       s.sum(statCanceled),
		Expired:        s.sum(statExpired),
		Charged:        s.sum(statCharged),
		Forgiven:       s.sum(statForgiven),
		Requests: Calls{Acquire: s.requests[callAcquire].Load(), Release: s.requests[callRelease].Load(),
			Charge: s.requests[callCharge].Load(), Extend: s.requests[callExtend].Load(),
			Restrict: s.requests[callRestrict].Load()},
		Errors: CallErrors{Acquire: s.errs(callAcquire), Release: s.errs(callRelease),
			Charge: s.errs(callCharge), Extend: s.errs(callExtend), Restrict: s.errs(callRestrict)},
		FallbackTime: time.Duration(s.fallbackNs.Load()),
	}

	c.mu.Lock()
	limiters := make([]*Limiter, 0, len(c.mu.limiters))
	for _, l := range c.mu.limiters {
		limiters = append(limiters, l)
	}
	for _, b := range c.mu.budgets {
		for i := range b.rules {
			if l := b.rules[i].lim; l != nil {
				limiters = append(limiters, l)
			}
		}
	}
	st.Budgets = len(c.mu.budgets)
	c.mu.Unlock()

	now := c.now()
	for _, l := range limiters {
		ls := l.stats(now)
		if l.owner == nil {
			st.Admitted.Leased += ls.leased
			switch ls.State {
			case StateLeased:
				st.Limiters.Leased++
			case StateCentral:
				st.Limiters.Central++
			case StateFallback:
				st.Limiters.Fallback++
			case StateInvalid:
				st.Limiters.Invalid++
			}
		}
		st.LeasesHeld += ls.LeasesHeld
		st.TokensHeld += ls.TokensHeld
		if ls.LeasesHeld > 0 && (st.LeaseTimeLeft == 0 || ls.LeaseTimeLeft < st.LeaseTimeLeft) {
			st.LeaseTimeLeft = ls.LeaseTimeLeft
		}
	}
	// closedLeased was read before the walk, so a Limiter closed meanwhile
	// is counted at most once, but may be missed (removed from the map
	// before its shutdown added its count): report no less than before,
	// so that the counter never goes back.
	for seen := s.leasedSeen.Load(); ; seen = s.leasedSeen.Load() {
		if st.Admitted.Leased <= seen {
			st.Admitted.Leased = seen
			break
		}
		if s.leasedSeen.CompareAndSwap(seen, st.Admitted.Leased) {
			break
		}
	}
	return st
}

// LimiterStats returns what the Limiter of key holds now, and false if c
// has no Limiter for key (never made, closed or forgotten). It does not
// make one.
func (c *Client) LimiterStats(key string) (LimiterStats, bool) {
	c.mu.Lock()
	l, ok := c.mu.limiters[key]
	c.mu.Unlock()
	if !ok {
		return LimiterStats{}, false
	}
	return l.stats(c.now()), true
}

// stats returns what l holds at now.
func (l *Limiter) stats(now int64) LimiterStats {
	st := LimiterStats{State: l.State()}
	l.mu.Lock()
	defer l.mu.Unlock()
	last := int64(-1)
	spent := l.mu.leasedSpent
	for _, ls := range l.mu.leases {
		spent += ls.granted - ls.left()
		if n := ls.usable(now); n > 0 {
			st.LeasesHeld++
			st.TokensHeld += n
			last = max(last, ls.deadline)
		}
	}
	st.leased = uint64(max(0, spent))
	if last >= 0 {
		st.LeaseTimeLeft = time.Duration(last - now)
	}
	if since := l.mu.fallbackSince; since >= 0 && st.State == StateFallback {
		st.InFallback = time.Duration(max(0, now-since))
	}
	return st
}

// counted counts the outcome of a Reserve or TryReserve slow path and
// returns it.
func (b *Budget) counted(r Reservation, err error) (Reservation, error) {
	if err != nil {
		b.c.stats.add(statReserveRefused, 1)
	} else {
		b.c.stats.add(statReserved, 1)
	}
	return r, err
}
