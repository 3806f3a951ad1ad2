package client

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"
)

// never is a time (on the Client's clock) that is never reached.
const never = math.MaxInt64

// Striping: a lease's tokens are split over up to maxStripes counters, each
// on its own cache line, so that spenders on different cores rarely touch the
// same line. A lease gets one stripe per minStripeTokens tokens granted, a
// power of two, at most the Client's stripe count.
const (
	maxStripes      = 16
	minStripeTokens = 64
)

// stripe is one share of a lease's tokens, alone on its cache line.
type stripe struct {
	tokens atomic.Int64 // unspent; dead (negative) once the lease died
	// low is this stripe's refresh trigger: a spender that leaves tokens
	// below it starts a refresh (see Limiter.armLocked).
	low atomic.Int64
	// open counts the Budget reservations that took from this stripe and
	// have not ended (budget.go); unused by a Limiter's own spending.
	open atomic.Int64
	_    [40]byte
}

// dead is what a dead lease's stripes hold: far below zero, so that no
// spender's take succeeds, and so that a Budget's refund (an Add of a few
// tokens, without the Limiter's lock) into a lease that died meanwhile
// leaves it dead rather than spendable.
const dead = math.MinInt64 / 2

// A lease is a batch of tokens the cluster debited for this client, to be
// spent until deadline on the Client's monotonic clock.
//
// The fast path (Limiter.AllowN) spends from one stripe of the head lease
// with a compare-and-swap, after checking deadline against a clock reading
// taken in the same call; no timer ever expires a lease. A stripe's tokens
// only ever decrease, except that a spender holding Limiter.mu may put back
// what it just took. A lease dies by swapping every stripe to 0 (under
// Limiter.mu), which returns the unused count exactly once: no spender can
// take a token after that, and the count the swaps returned is what goes back.
type lease struct {
	stripes []stripe // len is a power of two
	mask    uint64   // len(stripes) - 1
	salt    atomic.Uint64
	// refreshAt is the head lease's time trigger: a spender at or after it
	// starts a refresh.
	refreshAt atomic.Int64

	id uint64 // the cluster's lease id
	// group is the Budget lease this is one item of (group.go); nil for a
	// Limiter's own lease.
	group    *leaseGroup
	granted  int64 // tokens granted
	sent     int64 // when the request was first sent (Client clock, ns)
	deadline int64 // spend only while now < deadline (Client clock, ns)
	// start: spend only from then on (Client clock, ns). 0 for a lease,
	// usable from its grant; a piece of a pieced lease begins with its
	// bucket (window.go).
	start int64
}

// newLease returns a lease of granted tokens split over at most maxStripe
// stripes (a power of two).
func newLease(id uint64, granted, sent, deadline int64, maxStripe int) *lease {
	n := 1
	if k := granted / minStripeTokens; k > 1 {
		n = 1 << (bits.Len64(uint64(k)) - 1) // largest power of two <= k
	}
	n = min(n, max(1, maxStripe))
	l := &lease{stripes: make([]stripe, n), mask: uint64(n - 1), id: id, granted: granted, sent: sent, deadline: deadline}
	for i := range l.stripes {
		share := granted / int64(n)
		if int64(i) < granted%int64(n) {
			share++
		}
		l.stripes[i].tokens.Store(share)
	}
	l.refreshAt.Store(never)
	return l
}

// stripeCount returns the stripes worth using with procs processors: the
// smallest power of two >= 4·procs (so that spenders on different cores
// rarely share one), at most maxStripes; 1 for one processor.
func stripeCount(procs int) int {
	if procs <= 1 {
		return 1
	}
	n := 1
	for n < 4*procs && n < maxStripes {
		n <<= 1
	}
	return n
}

// pick returns the stripe a spender uses and the salt it was chosen with.
// The choice hashes the address of the calling goroutine's stack with the
// lease's salt: free to compute, and the same for a goroutine until its stack
// moves or the salt changes, so a goroutine keeps to one stripe (and one
// cache line) while goroutines on other cores use others. Two goroutines
// that land on the same stripe find out by losing compare-and-swaps; the
// loser calls collided, which changes the salt and so the mapping (see
// DESIGN.md).
func (l *lease) pick() (*stripe, uint64) {
	if l.mask == 0 {
		return &l.stripes[0], 0
	}
	salt := l.salt.Load()
	return &l.stripes[stackHash(salt)&l.mask], salt
}

// stackHash maps the calling goroutine, through the address of a variable
// on its stack, and salt to a number for picking a stripe: goroutines on
// different stacks spread out, and one goroutine keeps its pick while its
// stack does not move. It must be inlined to read the caller's stack.
func stackHash(salt uint64) uint64 {
	var probe byte
	h := (uint64(uintptr(unsafe.Pointer(&probe))>>10) ^ salt*0x9E3779B97F4A7C15) * 0xBF58476D1CE4E5B9
	return h >> 40
}

// stripe returns the stripe the calling goroutine uses.
func (l *lease) stripe() *stripe {
	s, _ := l.pick()
	return s
}

// collided records that a spender chosen with salt lost a compare-and-swap
// to another spender on its stripe: the salt changes (once per collision
// seen under that salt), remapping goroutines to stripes.
func (l *lease) collided(salt uint64) {
	if l.mask != 0 {
		l.salt.CompareAndSwap(salt, salt+1)
	}
}

// validity returns how long, from the moment its request was sent, a lease
// granted for ttl may be used by a client whose clock rate may differ from
// the leader's by up to a fraction rho: ttl·(1−ρ)/(1+ρ), rounded down.
//
// Why: the cluster starts a lease's life at the log time its Acquire
// applied, which is after the request was sent, and ends it when the
// leader's clock has advanced ttl. If the leader's clock runs fast by ρ, that
// is ttl/(1+ρ) of real time; if ours runs slow by ρ, a span our clock reads
// as D lasts D/(1−ρ) of real time. D/(1−ρ) <= ttl/(1+ρ) gives
// D = ttl·(1−ρ)/(1+ρ). Measuring from the send time, not the reply, makes
// network and queueing delay shorten the lease, never lengthen it.
func validity(ttl time.Duration, rho float64) int64 {
	if ttl <= 0 {
		return 0
	}
	v := math.Floor(float64(ttl) * (1 - rho) / (1 + rho))
	return min(int64(v), int64(ttl))
}

// take spends n tokens from s if it holds them, and reports whether it did.
func (s *stripe) take(n int64) bool {
	for t := s.tokens.Load(); t >= n; t = s.tokens.Load() {
		if s.tokens.CompareAndSwap(t, t-n) {
			return true
		}
	}
	return false
}

// takeUpTo spends up to n tokens from s and returns how many it took.
func (s *stripe) takeUpTo(n int64) int64 {
	for {
		t := s.tokens.Load()
		k := min(t, n)
		if k <= 0 {
			return 0
		}
		if s.tokens.CompareAndSwap(t, t-k) {
			return k
		}
	}
}

// kill marks l dead and returns its unused tokens; it returns 0 to every
// caller after the first. Call it with Limiter.mu held (a Budget's lease
// that no Limiter spends from needs no lock).
func (l *lease) kill() int64 {
	var n int64
	for i := range l.stripes {
		n += max(0, l.stripes[i].tokens.Swap(dead))
	}
	return n
}

// left returns l's unspent tokens, expired or not; 0 once dead.
func (l *lease) left() int64 {
	var n int64
	for i := range l.stripes {
		n += max(0, l.stripes[i].tokens.Load())
	}
	return n
}

// usable returns the tokens l can still give at now.
func (l *lease) usable(now int64) int64 {
	if now >= l.deadline || now < l.start {
		return 0
	}
	return l.left()
}
