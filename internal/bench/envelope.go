package bench

import (
	"errors"
	"math"
	"math/bits"
	"slices"
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

// Spurious counts the denials in calls that the limit did not require: for
// each key, a denial such that admitting it as well would have kept every
// admission of that key, before and after it, within B + r·Δ for every
// interval Δ (a token bucket of burst B and rate r, full at the run's
// start, which is time 0 of the calls). Lease is ignored: B + r·Δ is what
// the limit promises a user; the lease term only bounds over-admission.
// Each denial is judged on its own.
//
// The arithmetic, in integers. Admitting one more token at t keeps the
// admissions within the bound iff for every interval [s, e] ∋ t,
//
//	A[s, e] + 1 ≤ B + r·(e − s)
//
// where A counts admissions in [s, e]. The bench knows each call only to
// within its [Inv, Ret]: a denial is counted only if that holds however
// the calls are placed within their intervals. So count in A[s, e] every
// admission whose interval meets [s, e], Â(s, e) = #{Inv ≤ e} − #{Ret < s},
// and take every [s, e] that meets the denial's interval (s ≤ its Ret,
// e ≥ its Inv; dropping s ≤ e only adds constraints, all of them harmless
// for intervals as short as a call). The condition separates:
//
//	max_{e ≥ Inv_d} P(e) + max_{0 ≤ s ≤ Ret_d} Q(s) + 1 ≤ B,
//	P(e) = #{Inv ≤ e} − r·e,   Q(s) = r·s − #{Ret < s},
//
// and each maximum is reached at an admission's Inv (P) or Ret (Q), or at
// the bound itself: a suffix maximum over admissions sorted by Inv and a
// prefix maximum over admissions sorted by Ret, O(log n) per denial. Values
// are scaled by Per in nanoseconds (tokens·Per = count·Per − Limit·t) and
// kept in 128 bits, so nothing is rounded. It returns an error if e is not
// valid.
func (e Envelope) Spurious(calls []Call) (int64, error) {
	if !e.Valid() {
		return 0, errors.New("spurious denials: invalid envelope")
	}
	byKey := map[int][]Call{}
	for _, c := range calls {
		byKey[c.Key()] = append(byKey[c.Key()], c)
	}
	var n int64
	for _, cs := range byKey {
		n += e.spuriousKey(cs)
	}
	return n, nil
}

// spuriousKey is Spurious for the calls of one key.
func (e Envelope) spuriousKey(calls []Call) int64 {
	var invs, rets []int64
	for _, c := range calls {
		if c.Admitted() {
			invs = append(invs, int64(c.Inv))
			rets = append(rets, int64(c.Ret))
		}
	}
	slices.Sort(invs)
	slices.Sort(rets)
	scale := int64(e.Per)
	// refill returns r·t·Per for t in µs: Limit·1000·t tokens·ns.
	refill := func(t int64) i128 { return mul128(e.Limit, 1000*t) }
	count := func(k int) i128 { return mul128(int64(k), scale) }
	// P at each admission's Inv, #{Inv ≤ inv} counting ties; suffix maxima.
	suf := make([]i128, len(invs)+1)
	for j := len(invs) - 1; j >= 0; j-- {
		upper, _ := slices.BinarySearch(invs, invs[j]+1)
		p := count(upper).sub(refill(invs[j]))
		suf[j] = p
		if j+1 < len(invs) && !suf[j+1].less(p) {
			suf[j] = suf[j+1]
		}
	}
	// Q at each admission's Ret, #{Ret < ret}; prefix maxima, from Q(0) = 0.
	pre := make([]i128, len(rets))
	best := i128{}
	for j, r := range rets {
		lower, _ := slices.BinarySearch(rets, r)
		if q := refill(r).sub(count(lower)); best.less(q) {
			best = q
		}
		pre[j] = best
	}
	limit := mul128(e.Burst, scale)
	var n int64
	for _, c := range calls {
		if c.Admitted() {
			continue
		}
		inv, ret := int64(c.Inv), int64(c.Ret)
		after, _ := slices.BinarySearch(invs, inv+1) // #{Inv ≤ inv}
		pm := count(after).sub(refill(inv))
		if after < len(invs) && pm.less(suf[after]) {
			pm = suf[after]
		}
		upto, _ := slices.BinarySearch(rets, ret+1) // #{Ret ≤ ret}
		below, _ := slices.BinarySearch(rets, ret)  // #{Ret < ret}
		qm := refill(ret).sub(count(below))
		if qm.less(i128{}) {
			qm = i128{}
		}
		if upto > 0 && qm.less(pre[upto-1]) {
			qm = pre[upto-1]
		}
		if !limit.less(pm.add(qm).add(count(1))) {
			n++
		}
	}
	return n
}

// i128 is a signed 128-bit integer, two's complement, for the spurious
// arithmetic: products of counts and times by Per and Limit exceed 64 bits.
type i128 struct {
	hi int64
	lo uint64
}

// mul128 returns a·b for a, b ≥ 0.
func mul128(a, b int64) i128 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	return i128{hi: int64(hi), lo: lo}
}

func (a i128) add(b i128) i128 {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	return i128{hi: a.hi + b.hi + int64(c), lo: lo}
}

func (a i128) sub(b i128) i128 {
	lo, bw := bits.Sub64(a.lo, b.lo, 0)
	return i128{hi: a.hi - b.hi - int64(bw), lo: lo}
}

func (a i128) less(b i128) bool {
	if a.hi != b.hi {
		return a.hi < b.hi
	}
	return a.lo < b.lo
}
