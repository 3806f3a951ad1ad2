package bench

import (
	"math"
	"math/bits"
	"time"
)

// An Envelope is the most a token bucket may admit over a run, DESIGN.md
// invariant 7: Burst + Rate·(Δ + Lease) tokens in any interval of length Δ,
// with Rate = Limit per Per and Lease the longest lease life Λ (0 for a
// strict bucket or for a limiter that does not lease). It is computed here
// in integers, independently of package limiter and fsm, so that the bench
// checks the cluster rather than agreeing with it.
type Envelope struct {
	Burst int64         // bucket capacity B, tokens; ≥ 0
	Limit int64         // tokens refilled per Per; ≥ 0
	Per   time.Duration // refill period; > 0
	Lease time.Duration // Λ; ≥ 0
}

// Allowed returns the most tokens the bucket may admit in an interval of
// length elapsed: ⌊B + Limit·(elapsed + Lease)/Per⌋, exactly (128-bit
// product), saturating at math.MaxInt64. Since admissions are whole tokens,
// admitted ≤ Allowed(Δ) exactly when admitted ≤ B + r·(Δ + Λ).
func (e Envelope) Allowed(elapsed time.Duration) int64 {
	if e.Per <= 0 || e.Burst < 0 || e.Limit < 0 || elapsed < 0 || e.Lease < 0 {
		return 0 // not a valid envelope; see Valid
	}
	span, carry := bits.Add64(uint64(elapsed), uint64(e.Lease), 0)
	hi, lo := bits.Mul64(uint64(e.Limit), span)
	if carry != 0 {
		// span ≥ 2^64 cannot happen with two int64 ≥ 0; kept for safety.
		return math.MaxInt64
	}
	if hi >= uint64(e.Per) {
		return math.MaxInt64 // the quotient does not fit in 64 bits
	}
	q, _ := bits.Div64(hi, lo, uint64(e.Per))
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	sum, c := bits.Add64(q, uint64(e.Burst), 0)
	if c != 0 || sum > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(sum)
}

// Over returns how many tokens admitted exceeds the envelope by over an
// interval of length elapsed: 0 when within it.
func (e Envelope) Over(admitted int64, elapsed time.Duration) int64 {
	return max(0, admitted-e.Allowed(elapsed))
}

// Valid reports whether the envelope's fields are in range.
func (e Envelope) Valid() bool {
	return e.Per > 0 && e.Burst >= 0 && e.Limit >= 0 && e.Lease >= 0
}
