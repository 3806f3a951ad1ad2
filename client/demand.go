package client

import (
	"math"
	"time"
)

// countRefused adds n to the tokens refused without the lock, on a counter
// picked by the calling goroutine's stack address (sticky per goroutine).
func (l *Limiter) countRefused(n int64) {
	l.refused[stackHash(0)%refusedStripes].n.Add(n)
}

// refusedTotal returns the tokens counted by countRefused so far.
func (l *Limiter) refusedTotal() int64 {
	var n int64
	for i := range l.refused {
		n += l.refused[i].n.Load()
	}
	return n
}

// planLocked decides whether a refresh is due at now and, if so, sizes it:
// count is what blocked callers need now (at least 1), want what the recent
// rate of use will spend over the target period (capped by a lease's life),
// plus what callers need, minus what held leases will still provide; or, if
// larger, the idle share (idleShareLocked) less what is held.
func (l *Limiter) planLocked(now int64) (count, want int64, due bool) {
	l.sampleLocked(now)
	rate := l.rateLocked()
	low, lead := l.lowWaterLocked(rate)
	var held, minNeed, sumNeed int64
	effective := 0.0 // held tokens that will be spent before they expire
	last := int64(0)
	for _, ls := range l.mu.leases {
		u := ls.usable(now)
		held += u
		effective += min(float64(u), math.Ceil(rate*float64(ls.deadline-now)))
		if u > 0 {
			last = ls.deadline
		}
	}
	for _, n := range l.mu.needs {
		if minNeed == 0 || n < minNeed {
			minNeed = n
		}
		sumNeed += n
	}
	due = minNeed > 0 || held < low || now >= last-lead
	if !due {
		return 0, 0, false
	}
	count = max(1, minNeed)
	horizon := float64(min(int64(l.c.cfg.targetPeriod), l.mu.life))
	w := math.Ceil(rate*horizon) + float64(sumNeed) - effective
	w = max(w, l.idleShareLocked()-effective)
	want = count
	if w > float64(count) {
		want = int64(min(w, float64(max(count, l.maxGrant))))
	}
	return count, want, true
}

// lowWaterLocked returns the refresh mark for a demand of rate tokens per
// ns: refresh when the tokens held would last less than lead, a quarter of a
// grant's horizon or two round trips, whichever is longer.
func (l *Limiter) lowWaterLocked(rate float64) (low, lead int64) {
	horizon := min(int64(l.c.cfg.targetPeriod), l.mu.life)
	lead = min(max(horizon/4, int64(2*l.mu.rtt)), l.mu.life/2)
	return max(1, int64(math.Ceil(rate*float64(lead)))), lead
}

// sampleLocked folds the demand since the last sample into the rate
// estimates: exponentially weighted averages with a time constant of the
// target period (rate: it forgets a burst within a few periods) and of a few
// round trips (fast: it shows a burst within a few requests).
func (l *Limiter) sampleLocked(now int64) {
	dt := now - l.mu.sampledAt
	if dt <= 0 {
		return
	}
	demand := l.mu.used + l.refusedTotal()
	for _, ls := range l.mu.leases {
		demand += ls.granted - ls.left()
	}
	inst := float64(demand-l.mu.lastDemand) / float64(dt)
	alpha := 1 - math.Exp(-float64(dt)/float64(l.c.cfg.targetPeriod))
	l.mu.rate = ewma(l.mu.rate, inst, alpha)
	fastPeriod := max(4*l.mu.rtt, float64(fastMin))
	l.mu.fast = ewma(l.mu.fast, inst, 1-math.Exp(-float64(dt)/fastPeriod))
	l.mu.lastDemand, l.mu.sampledAt = demand, now
}

// fastMin is the shortest time constant of the fast demand estimate.
const fastMin = 20 * time.Millisecond

// rateLocked returns the demand estimate in tokens per ns, the larger of the
// two averages, capped by the key's whole rate. The fast one makes a busy
// key lease, and its leases grow to its rate, within a few requests rather
// than a few dozen (each token added 1/s to the slow estimate: a hot key
// made a dozen central decisions and small leases before its leases matched
// its rate); the slow one keeps a lease sized for a rate that has just
// dropped.
func (l *Limiter) rateLocked() float64 { return min(max(l.mu.rate, l.mu.fast), l.keyRate) }

func ewma(old, sample, alpha float64) float64 { return old + alpha*(sample-old) }

// chooseLocked decides at now between leasing and central decisions, and
// reports whether requests are decided centrally. A lease is worth
// leaseWorthLocked tokens to this client: a Limiter deciding centrally
// starts leasing once that is leaseAbove or more, and a leasing one stops
// (it spends what it holds, then decides centrally) once it is below
// centralBelow. The gap keeps a Limiter whose demand hovers near the mark
// from switching at every sample.
func (l *Limiter) chooseLocked(now int64) bool {
	if l.mu.noLease {
		l.mu.central = true
		return true
	}
	l.sampleLocked(now)
	switch w := max(l.leaseWorthLocked(), l.idleShareLocked()); {
	case l.mu.central && w >= leaseAbove:
		l.mu.central = false
	case !l.mu.central && w < centralBelow:
		l.mu.central = true
	}
	return l.mu.central
}

// leaseWorthLocked returns how many tokens of a lease this client would
// spend: its demand over a lease's life, at most its share of the key.
// Tokens leased beyond that would expire unspent, and while they were held
// the cluster would refuse other clients what the limit had room for.
func (l *Limiter) leaseWorthLocked() float64 {
	return min(l.rateLocked()*float64(l.mu.life), l.shareLocked())
}

// idleShareLocked returns what a lease may hold whatever this client's
// demand: 1/idleFraction of the key's stock at its last answer, split among
// its lessees. That much leaves the others short only if the key's use grows
// many times over within a lease's life; on a key whose limit is far above
// what its clients ask, it lets a client lease at its second request what
// its demand would otherwise take several round trips to show (8 clients ×
// 64 goroutines on 1000 keys of 1e9/s: 256 requests per 1000 admitted
// without it, and half the decisions/s). On a modest key it is nothing (8/s,
// burst 8: 0 tokens).
func (l *Limiter) idleShareLocked() float64 {
	if l.mu.stock <= 0 {
		return 0
	}
	return math.Floor(float64(l.mu.stock) / float64(idleFraction*max(1, int64(l.mu.lessees))))
}

// shareLocked returns this client's fair share of the key over a lease's
// life, ⌈F/n⌉, as the cluster splits it (fsm/DESIGN.md, "Grants"): F is
// what the key refills over the life, at most what it can hold for leases;
// n is its lessees as the cluster last reported them, 1 if not known yet.
func (l *Limiter) shareLocked() float64 {
	f := min(l.keyRate*float64(l.mu.life), float64(l.capacity))
	return math.Ceil(f / float64(max(1, l.mu.lessees)))
}
