package limiter

import (
	"fmt"
	"math"
	"math/big"
	"testing"
	"time"
)

// debtOp is one step of a debt step table.
type debtOp int

const (
	dTake   debtOp = iota + 1 // Take n: want allowed
	dCharge                   // Charge n with maxDebt: want charged
	dLower                    // Lower to level n at at
	dBlock                    // BlockUntil n
	dReturn                   // Return n
)

func (o debtOp) String() string {
	return [...]string{"?", "take", "charge", "lower", "block", "return"}[o]
}

// debtStep is one row of a debt step table: at log time at, do op with n
// (and maxDebt), expect want (whether a take was allowed, or what a charge
// charged), then expect Level and Available at at.
type debtStep struct {
	name    string
	at      int64
	op      debtOp
	n       int64
	maxDebt int64
	want    int64 // take: 1 allowed, 0 denied; charge: charged
	level   int64
	avail   int64
}

func TestBucketDebtSteps(t *testing.T) {
	tests := []struct {
		name   string
		rate   int64
		period time.Duration
		burst  int64
		steps  []debtStep
	}{
		{
			// 10 per second, burst 5: a token costs 100ms.
			name: "charge into debt and repay", rate: 10, period: time.Second, burst: 5,
			steps: []debtStep{
				{name: "charge 3 of a full bucket", at: 0, op: dCharge, n: 3, maxDebt: 5, want: 3, level: 2, avail: 2},
				{name: "charge 4 more: 2 into debt", at: 0, op: dCharge, n: 4, maxDebt: 5, want: 4, level: -2, avail: 0},
				{name: "a take waits for the debt", at: 0, op: dTake, n: 1, want: 0, level: -2, avail: 0},
				// Owing 2 at 0 means 3 tokens' refill, 300ms, before a token.
				{name: "still owing at 299ms", at: 299 * ms, op: dTake, n: 1, want: 0, level: 0, avail: 0},
				{name: "repaid at 300ms", at: 300 * ms, op: dTake, n: 1, want: 1, level: 0, avail: 0},
				// Level 0 at 300ms; the cap is 5 below empty: 5 charged of 9.
				{name: "charge beyond the cap", at: 300 * ms, op: dCharge, n: 9, maxDebt: 5, want: 5, level: -5, avail: 0},
				{name: "nothing more at the cap", at: 300 * ms, op: dCharge, n: 1, maxDebt: 5, want: 0, level: -5, avail: 0},
				// A refund pays debt back.
				{name: "return 2", at: 300 * ms, op: dReturn, n: 2, level: -3, avail: 0},
				{name: "a smaller cap charges nothing", at: 300 * ms, op: dCharge, n: 1, maxDebt: 2, want: 0, level: -3, avail: 0},
				{name: "full 1s later", at: 1300 * ms, op: dTake, n: 5, want: 1, level: 0, avail: 0},
			},
		},
		{
			name: "no debt: charge down to empty only", rate: 10, period: time.Second, burst: 5,
			steps: []debtStep{
				{name: "charge 7 of 5", at: 0, op: dCharge, n: 7, want: 5, level: 0, avail: 0},
				{name: "empty", at: 0, op: dCharge, n: 1, want: 0, level: 0, avail: 0},
				{name: "zero and negative charge nothing", at: 0, op: dCharge, n: 0, maxDebt: 100, want: 0, level: 0, avail: 0},
				{name: "negative", at: 0, op: dCharge, n: -3, maxDebt: 100, want: 0, level: 0, avail: 0},
				{name: "refilled", at: 500 * ms, op: dTake, n: 5, want: 1, level: 0, avail: 0},
			},
		},
		{
			// A negative maxDebt keeps tokens: a strict bucket's reserve of 3
			// with no debt allowed.
			name: "negative maxDebt keeps tokens", rate: 10, period: time.Second, burst: 5,
			steps: []debtStep{
				{name: "charge 4, keeping 3", at: 0, op: dCharge, n: 4, maxDebt: -3, want: 2, level: 3, avail: 3},
				{name: "keep more than held", at: 0, op: dCharge, n: 1, maxDebt: -4, want: 0, level: 3, avail: 3},
				{name: "keep more than the burst", at: 0, op: dCharge, n: 1, maxDebt: -9, want: 0, level: 3, avail: 3},
				{name: "keep 3, owe 1 more", at: 0, op: dCharge, n: 9, maxDebt: 1, want: 4, level: -1, avail: 0},
			},
		},
		{
			// 3 per 10ns: a token costs ⌈10/3⌉ = 4ns. Owing up to 2 below a
			// burst of 3 lets the TAT reach now + ⌊5·10/3⌋ = now + 16.
			name: "inexact costs", rate: 3, period: 10, burst: 3,
			steps: []debtStep{
				// 4 tokens cost ⌈40/3⌉ = 14 <= 16: all charged.
				{name: "charge 4", at: 100, op: dCharge, n: 4, maxDebt: 2, want: 4, level: -2, avail: 0},
				// 2ns of room left: ⌊2·3/10⌋ = 0 tokens.
				{name: "no whole token of room", at: 100, op: dCharge, n: 1, maxDebt: 2, want: 0, level: -2, avail: 0},
				// At 104 the room is 6ns: ⌊18/10⌋ = 1 token (cost 4).
				{name: "a token of room", at: 104, op: dCharge, n: 3, maxDebt: 2, want: 1, level: -2, avail: 0},
			},
		},
		{
			name: "block until a future time", rate: 10, period: time.Second, burst: 5,
			steps: []debtStep{
				{name: "block until 2s", at: 0, op: dBlock, n: 2 * sec, level: -20, avail: 0},
				{name: "nothing at 1s", at: sec, op: dTake, n: 1, want: 0, level: -10, avail: 0},
				{name: "nothing 1ns before 2s", at: 2*sec - 1, op: dTake, n: 1, want: 0, level: -1, avail: 0},
				{name: "empty at 2s", at: 2 * sec, op: dTake, n: 1, want: 0, level: 0, avail: 0},
				{name: "a token 100ms after", at: 2100 * ms, op: dTake, n: 1, want: 1, level: 0, avail: 0},
				// Empty at 2.1s already: a block until then changes nothing.
				{name: "a block ending now", at: 2100 * ms, op: dBlock, n: 2100 * ms, level: 0, avail: 0},
				// A block until 2.2s empties what would be 1 token then.
				{name: "a longer block", at: 2100 * ms, op: dBlock, n: 2200 * ms, level: -1, avail: 0},
				{name: "full at 2.7s", at: 2700 * ms, op: dTake, n: 5, want: 1, level: 0, avail: 0},
				{name: "a block in the past", at: 10 * sec, op: dBlock, n: 9 * sec, level: 5, avail: 5},
				{name: "a block until now", at: 10 * sec, op: dBlock, n: 10 * sec, level: 0, avail: 0},
			},
		},
		{
			name: "lower never raises", rate: 10, period: time.Second, burst: 5,
			steps: []debtStep{
				{name: "lower to 3", at: 0, op: dLower, n: 3, level: 3, avail: 3},
				{name: "lower to 4: no change", at: 0, op: dLower, n: 4, level: 3, avail: 3},
				{name: "lower to the burst: no change", at: 0, op: dLower, n: 5, level: 3, avail: 3},
				{name: "lower above the burst", at: 0, op: dLower, n: math.MaxInt64, level: 3, avail: 3},
				{name: "take 1", at: 0, op: dTake, n: 1, want: 1, level: 2, avail: 2},
				{name: "lower to 0", at: 0, op: dLower, n: 0, level: 0, avail: 0},
				{name: "lower to -2", at: 0, op: dLower, n: -2, level: -2, avail: 0},
				{name: "owing 2 takes 300ms to a token", at: 299 * ms, op: dTake, n: 1, want: 0, level: 0, avail: 0},
				{name: "a token at 300ms", at: 300 * ms, op: dTake, n: 1, want: 1, level: 0, avail: 0},
			},
		},
		{
			// 1 per second, burst 2.
			name: "time going backwards", rate: 1, period: time.Second, burst: 2,
			steps: []debtStep{
				{name: "charge 3 at 10s", at: 10 * sec, op: dCharge, n: 3, maxDebt: 2, want: 3, level: -1, avail: 0},
				// At 5s the TAT (13s) is 8s ahead: the cap (owe 2, 4s ahead of
				// 5s) is passed already; nothing is charged, nothing given.
				{name: "charge at 5s", at: 5 * sec, op: dCharge, n: 1, maxDebt: 2, want: 0, level: -6, avail: 0},
				{name: "lower at 5s", at: 5 * sec, op: dLower, n: 1, level: -6, avail: 0},
				{name: "state intact at 10s", at: 10 * sec, op: dCharge, n: 1, maxDebt: 2, want: 1, level: -2, avail: 0},
				// From min int64 the TAT is MaxInt64ns away, saturated: ⌈MaxInt64/1s⌉
				// tokens owed.
				{name: "min int64", at: math.MinInt64, op: dCharge, n: 1, maxDebt: 2, want: 0, level: 2 - (math.MaxInt64/sec + 1), avail: 0},
				{name: "block at min int64", at: math.MinInt64, op: dBlock, n: math.MinInt64, level: 2 - (math.MaxInt64/sec + 1), avail: 0},
				{name: "state intact again", at: 14 * sec, op: dTake, n: 2, want: 1, level: 0, avail: 0},
			},
		},
		{
			// Sums that would overflow saturate.
			name: "overflow", rate: 1, period: time.Hour, burst: 10,
			steps: []debtStep{
				{name: "a debt cap of MaxInt64", at: 0, op: dCharge, n: 1000, maxDebt: math.MaxInt64, want: 1000, level: -990, avail: 0},
				{name: "MaxInt64 tokens", at: 0, op: dCharge, n: math.MaxInt64, maxDebt: math.MaxInt64,
					// The TAT saturates at MaxInt64: (MaxInt64-1000h)/1h more
					// tokens fit.
					want:  (math.MaxInt64 - 1000*int64(time.Hour)) / int64(time.Hour),
					level: 10 - math.MaxInt64/int64(time.Hour), avail: 0},
				{name: "nothing beyond", at: 0, op: dCharge, n: 1, maxDebt: math.MaxInt64, want: 0,
					level: 10 - math.MaxInt64/int64(time.Hour), avail: 0},
				// The TAT saturates at MaxInt64, part of an hour further.
				{name: "lower to min int64", at: 0, op: dLower, n: math.MinInt64,
					level: 10 - math.MaxInt64/int64(time.Hour) - 1, avail: 0},
				{name: "block until max int64", at: 0, op: dBlock, n: math.MaxInt64,
					level: 10 - math.MaxInt64/int64(time.Hour) - 1, avail: 0},
			},
		},
		{
			name: "burst 0", rate: 1, period: time.Second, burst: 0,
			steps: []debtStep{
				{name: "no debt: nothing", at: 0, op: dCharge, n: 1, want: 0, level: 0, avail: 0},
				{name: "owe 2", at: 0, op: dCharge, n: 3, maxDebt: 2, want: 2, level: -2, avail: 0},
				{name: "block", at: 0, op: dBlock, n: 5 * sec, level: -5, avail: 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, tt.rate, tt.period, tt.burst)
			var s BucketState
			for i, st := range tt.steps {
				before := s
				got := int64(-1)
				switch st.op {
				case dTake:
					got = 0
					if b.Take(&s, st.at, st.n).Allowed {
						got = 1
					}
				case dCharge:
					got = b.Charge(&s, st.at, st.n, st.maxDebt)
				case dLower:
					b.Lower(&s, st.at, st.n)
				case dBlock:
					b.BlockUntil(&s, st.n)
				case dReturn:
					b.Return(&s, st.at, st.n)
				}
				where := fmt.Sprintf("step %d %q: %v(at=%d, n=%d, maxDebt=%d)", i, st.name, st.op, st.at, st.n, st.maxDebt)
				if (st.op == dTake || st.op == dCharge) && got != st.want {
					t.Errorf("%s = %d, want %d", where, got, st.want)
				}
				if st.op != dReturn && s.TAT < before.TAT {
					t.Errorf("%s moved the TAT back from %d to %d", where, before.TAT, s.TAT)
				}
				if st.op == dCharge && got > 0 && s.TAT != max(before.TAT, st.at)+int64(b.Cost(got)) {
					t.Errorf("%s moved the TAT from %d to %d, want by Cost(%d) = %d", where, before.TAT, s.TAT, got, b.Cost(got))
				}
				if l := b.Level(s, st.at); l != st.level {
					t.Errorf("%s: Level = %d, want %d (TAT %d)", where, l, st.level, s.TAT)
				}
				if a := b.Available(s, st.at); a != st.avail {
					t.Errorf("%s: Available = %d, want %d", where, a, st.avail)
				}
			}
		})
	}
}

// TestBucketDebtMatchesReference runs takes, returns, charges, lowers and
// blocks on the GCRA bucket beside the rational reference, in lockstep (the
// reference debits what the fast bucket reports charged), and checks:
//
//   - a charge never takes the exact level below -maxDebt, and stops short
//     of n only where one more token would (within rounding: tol);
//   - after a lower to L, or a block until T, the exact level is at most L,
//     or at most -(T-now)·Rate/Period, as the fast bucket holds it;
//   - takes stay safe and tight as in TestBucketMatchesReference;
//   - Level is the exact level rounded down, within rounding.
func TestBucketDebtMatchesReference(t *testing.T) {
	rng, seed := newRand(t)
	const sequences, opsPerSequence = 300, 200
	for seq := range sequences {
		rate, period, burst := randBucketParams(rng)
		b := mustBucket(t, rate, period, burst)
		now := rng.Int64N(1 << 40)
		ref := newRefBucket(rate, int64(period), burst, now)
		var s BucketState
		var ops int64 // ops that may each lose < 1ns to rounding
		tau := int64(b.Cost(burst))
		for i := range opsPerSequence {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d seq %d op %d (rate %d per %d, burst %d, now %d, TAT %d, ref level %s): %s",
					seed, seq, i, rate, period, burst, now, s.TAT, ref.level.FloatString(6), fmt.Sprintf(format, args...))
			}
			now += randGap(rng, tau, int64(b.Cost(1)))
			ref.at(now)
			tol := new(big.Rat).SetFrac(
				new(big.Int).Mul(big.NewInt(ops+1), big.NewInt(rate)), big.NewInt(int64(period)))
			ratio := new(big.Rat).SetFrac(big.NewInt(rate), big.NewInt(int64(period)))
			switch kind := rng.IntN(10); {
			case kind < 3: // charge
				n := randCount(rng, 2*burst+3)
				maxDebt := randCount(rng, burst+2)
				if rng.IntN(4) == 0 {
					maxDebt = -randCount(rng, burst)
				}
				got := b.Charge(&s, now, n, maxDebt)
				switch {
				case n <= 0:
					if got != 0 {
						fail("Charge(%d) charged %d", n, got)
					}
				case got < 0 || got > n:
					fail("Charge(%d, maxDebt %d) charged %d", n, maxDebt, got)
				}
				ref.take(got)
				if got > 0 {
					ops++
				}
				if got > 0 && ref.level.Cmp(big.NewRat(-maxDebt, 1)) < 0 {
					fail("Charge(%d, maxDebt %d) charged %d: exact level %s below -maxDebt", n, maxDebt, got, ref.level.FloatString(6))
				}
				// Short of n only at the cap: one more token would take the
				// exact level below -maxDebt, give or take rounding.
				if n > 0 && got < n && !ref.below(1-maxDebt, tol) {
					fail("Charge(%d, maxDebt %d) charged only %d, with exact level %s", n, maxDebt, got, ref.level.FloatString(6))
				}
			case kind < 5: // lower
				level := burst - randCount(rng, 2*burst+2)
				b.Lower(&s, now, level)
				if l := big.NewRat(level, 1); ref.level.Cmp(l) > 0 {
					ref.level.Set(l)
				}
				ops++
			case kind < 6: // block
				until := now + rng.Int64N(3*tau+2)
				b.BlockUntil(&s, until)
				if l := new(big.Rat).Mul(ratio, big.NewRat(now-until, 1)); ref.level.Cmp(l) > 0 {
					ref.level.Set(l)
				}
				ops++
			case kind < 7: // return
				n := rng.Int64N(burst + 2)
				b.Return(&s, now, n)
				if n > 0 {
					ref.give(n)
					ops++
				}
			default: // take
				n := randCount(rng, burst)
				d := b.Take(&s, now, n)
				switch {
				case n < 0 || n > burst:
					if d.Allowed || d.RetryAfter != Never {
						fail("take %d is impossible, got %+v", n, d)
					}
				case d.Allowed:
					if n > 0 && !ref.has(n) { // a take of 0 is always allowed
						fail("over-admission: took %d at exact level %s", n, ref.level.FloatString(6))
					}
					if n > 0 {
						ref.take(n)
						ops++
					}
				default:
					if !ref.below(n, tol) {
						fail("under-admission beyond rounding: denied %d at exact level %s, tol %s", n, ref.level.FloatString(6), tol.FloatString(6))
					}
				}
			}
			// Level is the exact level rounded down, give or take rounding;
			// Available is Level when positive.
			// (Owing more than MaxInt64 tokens, it saturates at
			// Burst-MaxInt64.)
			level := b.Level(s, now)
			if !ref.has(level) && level != burst-math.MaxInt64 {
				fail("Level %d above the exact level", level)
			}
			if !ref.below(level+1, tol) {
				fail("Level %d too far below the exact level (tol %s)", level, tol.FloatString(6))
			}
			if a := b.Available(s, now); a != max(level, 0) {
				fail("Available %d, Level %d", a, level)
			}
		}
	}
}

// BenchmarkBucketCharge: a charge of one token into a bucket that is at its
// debt cap half of the time.
func BenchmarkBucketCharge(b *testing.B) {
	tb := mustBucket(b, 1000, time.Second, 100)
	step := int64(tb.Cost(1))
	var s BucketState
	now := int64(1 << 40)
	b.ReportAllocs()
	for b.Loop() {
		now += step / 2
		tb.Charge(&s, now, 1, 100)
	}
}
