package limiter

import (
	"errors"
	"fmt"
	"time"
)

// MaxRefill is the longest time a token bucket may take to refill from empty to
// full. It keeps every sum of a log time and a refill time inside int64 for the
// first 146 years of a cluster's log clock.
const MaxRefill = time.Duration(1 << 62)

// TokenBucket is a token bucket in GCRA (generic cell rate algorithm) form: Rate
// tokens per Period, holding at most Burst.
//
// Its whole state is one theoretical arrival time, [BucketState]. A take of n
// tokens moves it forward by the time n tokens take to refill, cost(n) =
// ⌈n·Period/Rate⌉ nanoseconds, and is allowed when the bucket, which holds
// exactly Burst - (TAT-now)·Rate/Period tokens, holds at least n. Takes
// never put the TAT more than τ = cost(Burst) ahead of now; Charge (debt),
// Lower and BlockUntil (debt.go) may put it further, and the bucket then
// owes tokens that its refill repays before any take is allowed.
//
// Rounding: cost rounds up, so each Take may lose less than one nanosecond of
// refill; a refund rounds down. Over k takes the bucket under-admits by at most
// k nanoseconds' worth of tokens and never over-admits relative to the exact
// rational bucket.
//
// A TokenBucket is an immutable value, safe for concurrent use. The state it
// operates on is the caller's and is not synchronised.
type TokenBucket struct {
	rate   int64 // tokens per period, > 0
	period int64 // nanoseconds, > 0
	burst  int64 // tokens, >= 0
	tau    int64 // cost(burst) in nanoseconds, < MaxRefill
}

// BucketState is the mutable state of one token bucket.
// The zero value is a full bucket.
type BucketState struct {
	// TAT is the theoretical arrival time, in log-time nanoseconds. The bucket
	// is full at any now >= TAT; it holds Burst - (TAT-now)·Rate/Period tokens
	// otherwise.
	TAT int64
}

// ErrInvalidLimit is wrapped by every constructor error in this package.
var ErrInvalidLimit = errors.New("invalid limit")

// NewTokenBucket returns a bucket of rate tokens per period and the given burst.
// Rate and period must be positive, burst non-negative, and refilling the whole
// burst must take less than MaxRefill. A burst of 0 admits nothing.
func NewTokenBucket(rate int64, period time.Duration, burst int64) (TokenBucket, error) {
	var errs []error
	if rate <= 0 {
		errs = append(errs, fmt.Errorf("%w: rate %d must be positive", ErrInvalidLimit, rate))
	}
	if period <= 0 {
		errs = append(errs, fmt.Errorf("%w: period %v must be positive", ErrInvalidLimit, period))
	}
	if burst < 0 {
		errs = append(errs, fmt.Errorf("%w: burst %d must not be negative", ErrInvalidLimit, burst))
	}
	if len(errs) > 0 {
		return TokenBucket{}, errors.Join(errs...)
	}
	tau := mulDivCeil(burst, int64(period), rate)
	if tau >= int64(MaxRefill) {
		return TokenBucket{}, fmt.Errorf("%w: refilling burst %d at %d per %v takes longer than %v",
			ErrInvalidLimit, burst, rate, period, MaxRefill)
	}
	return TokenBucket{rate: rate, period: int64(period), burst: burst, tau: tau}, nil
}

// Rate returns the number of tokens added per Period.
func (b TokenBucket) Rate() int64 { return b.rate }

// Period returns the period over which Rate tokens are added.
func (b TokenBucket) Period() time.Duration { return time.Duration(b.period) }

// Burst returns the capacity of the bucket in tokens.
func (b TokenBucket) Burst() int64 { return b.burst }

// Cost returns the time n tokens take to refill, rounded up to the nanosecond.
// It saturates at the largest Duration.
func (b TokenBucket) Cost(n int64) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(mulDivCeil(n, b.period, b.rate))
}

// Tokens returns how many whole tokens refill in d, rounded down.
func (b TokenBucket) Tokens(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return mulDivFloor(int64(d), b.rate, b.period)
}

// Check reports what Take(s, now, n) would decide, without changing s.
func (b TokenBucket) Check(s BucketState, now, n int64) Decision {
	d, _ := b.decide(s, now, n, 0)
	return d
}

// Take takes n tokens at log time now if the bucket holds them, and returns the
// decision. A denied take leaves s unchanged. n == 0 is always allowed and
// changes nothing; n < 0 or n > Burst is denied with RetryAfter Never.
func (b TokenBucket) Take(s *BucketState, now, n int64) Decision {
	return b.TakeLeaving(s, now, n, 0)
}

// TakeLeaving takes n tokens only if keep more tokens would still be left in the
// bucket afterwards. It is how a strict limit holds back the tokens that live
// leases may still spend (see package fsm). keep must not be negative.
func (b TokenBucket) TakeLeaving(s *BucketState, now, n, keep int64) Decision {
	d, tat := b.decide(*s, now, n, keep)
	if d.Allowed && n > 0 {
		s.TAT = tat
	}
	return d
}

// Available returns the number of tokens a take at now could get.
func (b TokenBucket) Available(s BucketState, now int64) int64 {
	return b.remaining(max(s.TAT, now), now)
}

// Full reports whether the bucket is full at now, in which case its state
// carries no information and may be forgotten.
func (b TokenBucket) Full(s BucketState, now int64) bool { return s.TAT <= now }

// Empty returns the state of a bucket that holds no tokens at now and refills
// from there.
func (b TokenBucket) Empty(now int64) BucketState { return BucketState{TAT: addSat(now, b.tau)} }

// Return gives n unused tokens back at log time now. The bucket never holds more
// than Burst afterwards; the refund rounds down to the nanosecond.
func (b TokenBucket) Return(s *BucketState, now, n int64) {
	if n <= 0 || s.TAT <= now {
		return
	}
	refund := mulDivFloor(n, b.period, b.rate)
	s.TAT = max(subSat(s.TAT, refund), now)
}

// decide computes the decision for taking n while leaving keep, and the TAT an
// allowed take would store.
func (b TokenBucket) decide(s BucketState, now, n, keep int64) (Decision, int64) {
	tat := max(s.TAT, now)
	if n < 0 || keep < 0 || n > b.burst || keep > b.burst-n {
		return Decision{Remaining: b.remaining(tat, now), RetryAfter: Never, ResetAfter: b.resetAfter(tat, now)}, tat
	}
	// The bucket owes debt nanoseconds of refill, so it holds exactly
	// Burst - debt·Rate/Period tokens. That is at least n+keep iff
	// debt <= (Burst-n-keep)·Period/Rate, and as debt is whole nanoseconds, iff
	// debt <= allow below. (Comparing cost(n+keep), rounded up, with tau, also
	// rounded up, over-admits when tau's rounding exceeds the cost's.) Asking
	// for nothing is always allowed, even while rounding leaves the exact
	// level a fraction below zero.
	debt := subSat(tat, now)
	allow := mulDivFloor(b.burst-n-keep, b.period, b.rate)
	if n+keep > 0 && debt > allow {
		return Decision{
			Remaining:  b.remaining(tat, now),
			RetryAfter: time.Duration(debt - allow), // both >= 0: no overflow
			ResetAfter: b.resetAfter(tat, now),
		}, tat
	}
	tat = addSat(tat, mulDivCeil(n, b.period, b.rate))
	return Decision{Allowed: true, Remaining: b.remaining(tat, now), ResetAfter: b.resetAfter(tat, now)}, tat
}

// remaining returns the whole tokens in a bucket whose TAT is tat >= now:
// ⌊Burst - debt·Rate/Period⌋ = Burst - ⌈debt·Rate/Period⌉, at least 0.
func (b TokenBucket) remaining(tat, now int64) int64 {
	return max(b.burst-mulDivCeil(subSat(tat, now), b.rate, b.period), 0)
}

func (b TokenBucket) resetAfter(tat, now int64) time.Duration {
	return time.Duration(max(subSat(tat, now), 0))
}
