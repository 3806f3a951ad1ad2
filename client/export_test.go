package client

import (
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// LockForTest locks l's mutex and returns its unlock, so that a test can
// check that a path takes no lock.
func LockForTest(l *Limiter) (unlock func()) {
	l.mu.Lock()
	return l.mu.Unlock
}

// RefusedForTest returns the tokens AllowN refused without the lock.
func RefusedForTest(l *Limiter) int64 { return l.refusedTotal() }

// LeasingForTest makes l lease from its next request, as a Limiter does
// once its demand makes a lease worth it, with the demand estimate at 1/8
// of the key's rate; it returns l. Tests of the lease path start from it,
// rather than from the few central decisions that measure a demand.
func LeasingForTest(l *Limiter) *Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.mu.noLease {
		l.mu.central = false
		l.mu.rate = l.keyRate / 8
	}
	return l
}

// BudgetLeasingForTest makes every token rule of b lease from its next
// reservation (LeasingForTest on each rule's Limiter); it returns b.
func BudgetLeasingForTest(b *Budget) *Budget {
	for _, r := range b.rules {
		if r.lim != nil {
			LeasingForTest(r.lim)
		}
	}
	return b
}

// BudgetHeldForTest returns, per rule key, the tokens b holds on valid
// leases at the Client's now.
func BudgetHeldForTest(b *Budget) map[string]int64 {
	out := make(map[string]int64)
	now := b.c.now()
	for _, r := range b.rules {
		if l := r.lim; l != nil {
			l.mu.Lock()
			out[r.key] = l.heldLocked(now)
			l.mu.Unlock()
		}
	}
	return out
}

// BudgetBrokenUndoForTest makes b the known-bad Budget whose reservations
// refused on one rule keep what they took from rule i.
func BudgetBrokenUndoForTest(b *Budget, i int) { b.brokenUndo = i + 1 }

// SizesForTest returns how many Limiters and Budgets c's maps hold.
func SizesForTest(c *Client) (limiters, budgets int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.mu.limiters), len(c.mu.budgets)
}

// WithAPIForTest makes the Client call api(endpoint) instead of each
// endpoint's gRPC connection.
func WithAPIForTest(api func(endpoint string) pb.LeaseholdClient) Option {
	return func(c *config) { c.api = api }
}

// SpendForTest returns what c costs at p, in micro-USD.
func SpendForTest(p Price, c Cost) int64 { return p.spend(c) }

// RoundTripForTest returns l's average round trip to the cluster.
func RoundTripForTest(l *Limiter) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.mu.rtt)
}

// SpawnForTest runs f as the Client runs its background work (spawn).
func SpawnForTest(c *Client, f func()) bool { return c.spawn(f) }

// IdleWorkersForTest returns how many of c's workers wait for work.
func IdleWorkersForTest(c *Client) int { return int(c.idle.Load()) }

// MaxIdleWorkers is maxIdleWorkers.
const MaxIdleWorkers = maxIdleWorkers
