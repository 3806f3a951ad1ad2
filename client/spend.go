package client

import (
	"math"
	"math/rand/v2"
	"slices"
)

// spendLocked spends n tokens from central grants or held leases, oldest
// deadline first, if they hold enough at now.
func (l *Limiter) spendLocked(now, n int64) bool {
	if l.mu.direct >= n && now < l.mu.directUntil {
		l.mu.direct -= n
		l.mu.used += n
		l.c.stats.add(statCentral, uint64(n))
		l.c.trace.admit(l.key, n, 0, AdmitCentral)
		return true
	}
	if ls := l.head.Load(); ls != nil && ls.usable(now) == 0 {
		l.publishLocked(now) // drop spent and expired leases
	}
	if l.heldLocked(now) < n {
		return false
	}
	// Fast-path spenders take only whole amounts from one stripe of the
	// head, concurrently, so the greedy pass below can fall short only by
	// what they took meanwhile; then it puts back what it took (no lease
	// can die while l.mu is held).
	type took struct {
		s  *stripe
		k  int64
		id uint64 // the lease s belongs to, for the trace
	}
	var buf [2 * maxStripes]took
	taken := buf[:0]
	got := int64(0)
spend:
	for _, ls := range l.mu.leases {
		if now >= ls.deadline || now < ls.start {
			continue
		}
		off := rand.Uint64()
		for j := range uint64(len(ls.stripes)) {
			s := &ls.stripes[(off+j)&ls.mask]
			if k := s.takeUpTo(n - got); k > 0 {
				taken = append(taken, took{s, k, ls.id})
				if got += k; got == n {
					break spend
				}
			}
		}
	}
	if got < n {
		for _, t := range taken {
			t.s.tokens.Add(t.k)
		}
		return false
	}
	l.rebalanceLocked(now)
	l.armLocked(now)
	if tr := l.c.trace; tr != nil {
		// One report per lease, in the order spent.
		for i := 0; i < len(taken); {
			id, k := taken[i].id, int64(0)
			for ; i < len(taken) && taken[i].id == id; i++ {
				k += taken[i].k
			}
			tr.admit(l.key, k, id, AdmitLeased)
		}
	}
	return true
}

// rebalanceLocked spreads the head lease's tokens evenly over its stripes
// once one of them has run dry, so that the spenders mapped to it (a lone
// goroutine always is) go back to the fast path. Spenders on other stripes
// meanwhile find them empty and wait on l.mu.
func (l *Limiter) rebalanceLocked(now int64) {
	if len(l.mu.leases) == 0 {
		return
	}
	head := l.mu.leases[0]
	if head.mask == 0 || now >= head.deadline {
		return
	}
	dry := false
	for i := range head.stripes {
		dry = dry || head.stripes[i].tokens.Load() == 0
	}
	if !dry {
		return
	}
	var total int64
	for i := range head.stripes {
		total += head.stripes[i].takeUpTo(math.MaxInt64)
	}
	n := int64(len(head.stripes))
	for i := range head.stripes {
		share := total / n
		if int64(i) < total%n {
			share++
		}
		head.stripes[i].tokens.Add(share)
	}
}

// heldLocked returns the tokens usable at now.
func (l *Limiter) heldLocked(now int64) int64 {
	var n int64
	for _, ls := range l.mu.leases {
		n += ls.usable(now)
	}
	return n
}

// nextExpiryLocked returns the first deadline after now of a held lease with
// tokens, or never.
func (l *Limiter) nextExpiryLocked(now int64) int64 {
	for _, ls := range l.mu.leases {
		if ls.usable(now) > 0 {
			return ls.deadline
		}
	}
	return never
}

// publishLocked drops spent and expired leases, makes the first one left the
// head and sets its refresh triggers. Pieces not yet begun stay; if the head
// is one, requests are refused until it begins (window.go).
func (l *Limiter) publishLocked(now int64) {
	l.mu.leases = slices.DeleteFunc(l.mu.leases, func(ls *lease) bool {
		if now < ls.deadline && ls.left() > 0 {
			return false
		}
		spent := ls.granted - ls.left()
		l.mu.used += spent
		l.mu.leasedSpent += spent
		return true
	})
	clear(l.mu.leases[len(l.mu.leases):cap(l.mu.leases)])
	if len(l.mu.leases) == 0 {
		l.head.Store(nil)
		return
	}
	l.head.Store(l.mu.leases[0])
	if l.paced {
		l.awaitPieceLocked(now)
	}
	l.armLocked(now)
}

// armLocked sets the head lease's refresh triggers. The time trigger fires a
// lead time before the last held lease expires. The low-water trigger is
// spread over the head's stripes: with slack = held − low, each stripe fires
// once it has given ⌈slack/stripes⌉ more tokens, so the first stripe fires
// no later than held reaching low. A stripe that fires early (stripes drain
// unevenly) starts a refresh that finds nothing due and re-arms them with
// the smaller slack, so spurious refreshes stay few.
func (l *Limiter) armLocked(now int64) {
	if len(l.mu.leases) == 0 {
		return
	}
	if l.pacedLocked() {
		l.armPacedLocked()
		return
	}
	head := l.mu.leases[0]
	low, lead := l.lowWaterLocked(l.rateLocked())
	head.refreshAt.Store(l.mu.leases[len(l.mu.leases)-1].deadline - lead)
	slack := l.heldLocked(now) - low
	per := (slack + int64(len(head.stripes)) - 1) / int64(len(head.stripes))
	for i := range head.stripes {
		s := &head.stripes[i]
		if slack < 0 {
			s.low.Store(math.MaxInt64) // due now: the next spender starts a refresh
		} else {
			s.low.Store(max(0, s.tokens.Load()-per))
		}
	}
}
