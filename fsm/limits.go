package fsm

import (
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// compiled is a validated limit with its algorithm built, shared by every key
// that uses the same definition.
type compiled struct {
	def    Limit // normalized
	bucket limiter.TokenBucket
	window limiter.SlidingWindow
	conc   limiter.Concurrency
	// maxLease is the longest lease, in nanoseconds, a grant on a key with
	// this limit may carry: def.MaxLease, capped by the window length, or 0
	// for a strict bucket whose burst cannot hold back a lease's worth.
	maxLease int64
	// reserve is the tokens a strict bucket holds back from every grant:
	// at least rate·maxLease, so that leases never take the bound past
	// Burst + rate·Δ.
	reserve int64
	refs    int // keys using this limit; 0 means the slot is free
}

// compile validates l and builds its algorithm. The error is a message for a
// user: what is wrong and what is allowed.
func compile(l Limit) (compiled, error) {
	l = l.Normalize()
	c := compiled{def: l}
	if l.Limit <= 0 {
		return c, fmt.Errorf("limit %d must be positive", l.Limit)
	}
	if l.MaxLease < 0 || l.MaxLease > MaxLeaseTTL {
		return c, fmt.Errorf("max lease %v must be in [0, %v]", l.MaxLease, MaxLeaseTTL)
	}
	c.maxLease = int64(l.MaxLease)
	var err error
	switch l.Algorithm {
	case TokenBucket:
		if l.Period <= 0 {
			return c, fmt.Errorf("period %v must be positive", l.Period)
		}
		if l.Burst < 0 {
			return c, fmt.Errorf("burst %d must not be negative", l.Burst)
		}
		if l.MaxDebt < 0 {
			return c, fmt.Errorf("max debt %d must not be negative", l.MaxDebt)
		}
		if l.MaxDebt > math.MaxInt64-l.Burst {
			return c, fmt.Errorf("burst %d plus max debt %d is too large", l.Burst, l.MaxDebt)
		}
		c.bucket, err = limiter.NewTokenBucket(l.Limit, l.Period, l.Burst)
		if err == nil && l.MaxDebt > 0 {
			// The TAT of a bucket in debt is up to Cost(Burst + MaxDebt)
			// ahead of now: it must stay as far inside int64 as a burst's.
			if _, err := limiter.NewTokenBucket(l.Limit, l.Period, l.Burst+l.MaxDebt); err != nil {
				return c, fmt.Errorf("burst %d plus max debt %d: %w", l.Burst, l.MaxDebt, err)
			}
		}
		if err == nil && l.Strict {
			// Tokens that refill during the longest lease, rounded up:
			// ⌈Λ·Limit/Period⌉ is the floor plus one unless the product
			// divides exactly. (Comparing Cost(floor) with Λ misses the
			// fraction when Cost's own rounding reaches Λ.)
			c.reserve = c.bucket.Tokens(l.MaxLease)
			hi, lo := bits.Mul64(uint64(l.MaxLease), uint64(l.Limit))
			if c.reserve < l.Burst && bits.Rem64(hi, lo, uint64(l.Period)) != 0 {
				c.reserve++
			}
			if c.reserve >= l.Burst {
				c.reserve, c.maxLease = 0, 0 // cannot lease and stay strict
			}
		}
	case SlidingWindow:
		if l.Period <= 0 {
			return c, fmt.Errorf("window %v must be positive", l.Period)
		}
		if l.Slots < 1 || l.Slots > limiter.MaxSlots {
			return c, fmt.Errorf("slots %d must be in [1, %d]", l.Slots, limiter.MaxSlots)
		}
		buckets := l.Slots
		if l.Buckets != 0 {
			if l.Buckets < l.Slots || l.Buckets > limiter.MaxSlots {
				return c, fmt.Errorf("buckets %d must be 0 or in [slots %d, %d]", l.Buckets, l.Slots, limiter.MaxSlots)
			}
			buckets = l.Buckets
		}
		c.window, err = limiter.NewSlidingWindow(l.Limit, l.Period, int(buckets))
		c.maxLease = min(c.maxLease, int64(l.Period))
	case Concurrency:
		c.conc, err = limiter.NewConcurrency(l.Limit)
	default:
		return c, fmt.Errorf("unknown algorithm %d (want %d token bucket, %d sliding window or %d concurrency)",
			l.Algorithm, TokenBucket, SlidingWindow, Concurrency)
	}
	return c, err
}

// chargeDebt is the maxDebt a Charge on a key of this token-bucket limit
// passes to limiter.TokenBucket.Charge: MaxDebt tokens below what grants may
// take, so below the reserve of a strict bucket. It may be negative: a
// strict bucket then keeps part of its reserve.
func (c *compiled) chargeDebt() int64 { return c.def.MaxDebt - c.reserve }

// refill returns what a key with this limit refills over ttl nanoseconds, at
// most what it can hold (a strict bucket's reserve left out): the supply its
// lessees share over one lease's life. 0 for a concurrency limit, which does
// not refill.
func (c *compiled) refill(ttl int64) int64 {
	if ttl <= 0 {
		return 0
	}
	switch c.def.Algorithm {
	case TokenBucket:
		return min(c.bucket.Tokens(time.Duration(ttl)), c.def.Burst-c.reserve)
	case SlidingWindow:
		hi, lo := bits.Mul64(uint64(ttl), uint64(c.def.Limit))
		if hi >= uint64(c.def.Period) {
			return c.def.Limit
		}
		q, _ := bits.Div64(hi, lo, uint64(c.def.Period))
		return int64(min(q, uint64(c.def.Limit)))
	}
	return 0
}

// limitTable interns compiled limits: keys that share a definition share one
// entry, so a key costs a 31-bit id rather than a copy of its limit.
//
// Ids are assigned in apply order and freed ids are reused last-in first-out,
// so every replica assigns the same ids; snapshots carry the table and its
// free list as they are.
type limitTable struct {
	slots []compiled       // by id; id 0 is never used
	ids   map[Limit]uint32 // normalized definition -> id
	free  []uint32         // freed ids, reused from the end
}

func newLimitTable() limitTable {
	return limitTable{slots: make([]compiled, 1), ids: make(map[Limit]uint32)}
}

// get returns the limit with the given id.
func (t *limitTable) get(id uint32) *compiled { return &t.slots[id] }

// acquire returns the id of c's definition, adding it if new, and counts one
// more reference to it.
func (t *limitTable) acquire(c *compiled) uint32 {
	id, ok := t.ids[c.def]
	if !ok {
		if n := len(t.free); n > 0 {
			id = t.free[n-1]
			t.free = t.free[:n-1]
			t.slots[id] = *c
		} else {
			id = uint32(len(t.slots))
			t.slots = append(t.slots, *c)
		}
		t.slots[id].refs = 0
		t.ids[c.def] = id
	}
	t.slots[id].refs++
	return id
}

// release drops one reference to id, freeing it when none is left.
func (t *limitTable) release(id uint32) {
	s := &t.slots[id]
	s.refs--
	if s.refs > 0 {
		return
	}
	delete(t.ids, s.def)
	*s = compiled{}
	t.free = append(t.free, id)
}
