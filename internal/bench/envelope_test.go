package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestEnvelope(t *testing.T) {
	bucket := Envelope{Burst: 1000, Limit: 1000, Per: time.Second}
	leased := bucket
	leased.Lease = 2 * time.Second
	for _, tc := range []struct {
		name     string
		env      Envelope
		elapsed  time.Duration
		admitted int64
		allowed  int64
		over     int64
	}{
		{"burst only", bucket, 0, 1000, 1000, 0},
		{"burst plus refill", bucket, 10 * time.Second, 11_000, 11_000, 0},
		// The known-bad case: one token more than B + r·Δ must be flagged.
		{"one over", bucket, 10 * time.Second, 11_001, 11_000, 1},
		{"lease life counts", leased, 10 * time.Second, 13_000, 13_000, 0},
		{"one over with leases", leased, 10 * time.Second, 13_001, 13_000, 1},
		{"refill rounds down", bucket, 10*time.Second + 999_999, 11_001, 11_000, 1},
		{"refill just reaches a token", bucket, 10*time.Second + time.Millisecond, 11_001, 11_001, 0},
		// 3 tokens per 2s over 1s is 1.5: 1 whole token.
		{"fractional rate", Envelope{Burst: 0, Limit: 3, Per: 2 * time.Second}, time.Second, 2, 1, 1},
		{"zero rate", Envelope{Burst: 5, Limit: 0, Per: time.Second}, time.Hour, 5, 5, 0},
		// Limit·Δ overflows int64 (1e18 · 1e10 ns = 1e28); the 128-bit
		// product must not wrap around: 1 + ⌊1e28 / 3.6e12⌋.
		{"huge product", Envelope{Burst: 1, Limit: 1e18, Per: time.Hour}, 1e10, 1 << 62, 2777777777777778, 1<<62 - 2777777777777778},
		{"saturates", Envelope{Burst: math.MaxInt64, Limit: math.MaxInt64, Per: 1}, math.MaxInt64, math.MaxInt64, math.MaxInt64, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.env.Allowed(tc.elapsed); got != tc.allowed {
				t.Errorf("Allowed(%v) = %d, want %d", tc.elapsed, got, tc.allowed)
			}
			if got := tc.env.Over(tc.admitted, tc.elapsed); got != tc.over {
				t.Errorf("Over(%d, %v) = %d, want %d", tc.admitted, tc.elapsed, got, tc.over)
			}
		})
	}
}

func TestEnvelopeInvalid(t *testing.T) {
	for _, e := range []Envelope{{Per: 0}, {Per: time.Second, Burst: -1}, {Per: time.Second, Limit: -1}, {Per: time.Second, Lease: -1}} {
		if e.Valid() {
			t.Errorf("%+v is valid, want invalid", e)
		}
		if got := e.Allowed(time.Second); got != 0 {
			t.Errorf("%+v.Allowed = %d, want 0", e, got)
		}
	}
}

// TestReportSumsKeys: every key has its own envelope; an over-admission on
// one key is not hidden by another key's slack.
func TestReportSumsKeys(t *testing.T) {
	r := Report{Envelope: Envelope{Burst: 10, Limit: 10, Per: time.Second}}
	r.Elapsed = time.Second
	r.PerKey = []int64{25, 5}
	r.Admitted = 30
	r.check()
	if r.Allowed != 40 || r.Over != 5 {
		t.Fatalf("allowed %d over %d, want 40 and 5 (key 0 is 5 over although the total is under)", r.Allowed, r.Over)
	}
}

func TestKeyLimit(t *testing.T) {
	lim, env, err := KeyLimit(ModeLease, 1000, 1000, time.Second)
	if err != nil || lim.Strict || lim.MaxLease != 2*time.Second || env.Lease != 2*time.Second {
		t.Fatalf("lease: %+v %+v %v, want a non-strict bucket with 2s leases and Λ = 2s", lim, env, err)
	}
	for _, tc := range []struct {
		rate, burst int64
		per         time.Duration
	}{{1000, 1000, time.Second}, {3, 10, time.Second}, {1000, 5000, time.Second}, {7, 1, time.Minute}} {
		lim, env, err := KeyLimit(ModeCentral, tc.rate, tc.burst, tc.per)
		if err != nil {
			t.Fatalf("central %+v: %v", tc, err)
		}
		if !lim.Strict || env.Lease != 0 {
			t.Errorf("central %+v: strict %v, Λ %v; want strict and Λ 0", tc, lim.Strict, env.Lease)
		}
		// The SDK and the cluster lease nothing when the reserve
		// ⌈rate·MaxLease/per⌉ ≥ burst; MaxLease is the smallest span whose
		// refill covers the burst without rounding: rate·d/per ≥ burst.
		refills := func(d time.Duration) bool {
			return float64(tc.rate)*float64(d) >= float64(tc.burst)*float64(tc.per)
		}
		if !refills(lim.MaxLease) || refills(lim.MaxLease-1) {
			t.Errorf("central %+v: MaxLease %v is not the shortest span that refills the burst", tc, lim.MaxLease)
		}
	}
	if _, _, err := KeyLimit(ModeCentral, 1, 1000, time.Second); err == nil {
		t.Error("central with a burst of 1000 s of refill: no error, want one (MaxLease is at most a minute)")
	}
	if _, _, err := KeyLimit(ModeLease, 0, 1, time.Second); err == nil {
		t.Error("rate 0: no error")
	}
}

func TestSpuriousByHand(t *testing.T) {
	// B = 1, r = 1/s; times in µs.
	env := Envelope{Burst: 1, Limit: 1, Per: time.Second}
	const s = 1_000_000
	at := func(sec float64) uint32 { return uint32(sec * s) }
	admit := func(sec float64) Call { return NewCall(0, true, at(sec), at(sec)) }
	deny := func(sec float64) Call { return NewCall(0, false, at(sec), at(sec)) }
	for _, tc := range []struct {
		name  string
		calls []Call
		want  int64
	}{
		{"full bucket at the start", []Call{deny(0)}, 1},
		{"empty half a second after a take", []Call{admit(10), deny(10.5)}, 0},
		{"refilled a second after a take", []Call{admit(10), deny(11.5)}, 1},
		// Admitting at 11.5 would leave half a token for the admission
		// at 12: the limit required the denial.
		{"the future counts", []Call{admit(10), deny(11.5), admit(12)}, 0},
		{"exactly one token back", []Call{admit(10), deny(11)}, 1},
		{"a microsecond short", []Call{admit(10), NewCall(0, false, at(11)-1, at(11)-1)}, 0},
		// The denial's interval [10.2, 11.5] includes 10.2, when the
		// bucket was empty: not counted, however long the call took.
		{"uncertain denial", []Call{admit(10), NewCall(0, false, at(10.2), at(11.5))}, 0},
		// An admission whose interval reaches 11.2 may have happened
		// then: the denial at 11.5 is not surely spurious.
		{"uncertain admission", []Call{NewCall(0, true, at(10), at(11.2)), deny(11.5)}, 0},
		{"keys are separate", []Call{admit(10), NewCall(1, false, at(10.5), at(10.5))}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := env.Spurious(tc.calls)
			if err != nil || got != tc.want {
				t.Errorf("Spurious = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

// The spurious count against a naive reference: for calls at exact
// instants, a denial at t is spurious iff replaying the admissions and t
// through a token bucket (full at 0) never takes it below 0.
func TestSpuriousMatchesReplay(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var spurious, required int64
	for trial := range 2000 {
		env := Envelope{Burst: 1 + rng.Int64N(4), Limit: 1 + rng.Int64N(4), Per: time.Duration(1+rng.IntN(3)) * time.Second}
		var calls []Call
		for range 1 + rng.IntN(20) {
			ts := uint32(rng.IntN(40)) * 100_000 // 0 to 4 s, 100 ms steps
			calls = append(calls, NewCall(0, rng.IntN(3) > 0, ts, ts))
		}
		var admitted []uint32
		for _, c := range calls {
			if c.Admitted() {
				admitted = append(admitted, c.Inv)
			}
		}
		if !replayFits(env, admitted) {
			continue // the admissions themselves break B + r·Δ: not the case measured
		}
		var want int64
		for _, c := range calls {
			if !c.Admitted() && replayFits(env, append(slices.Clone(admitted), c.Inv)) {
				want++
			}
		}
		if got, _ := env.Spurious(calls); got != want {
			t.Fatalf("trial %d: %+v %v: Spurious = %d, replay says %d", trial, env, calls, got, want)
		}
		for _, c := range calls {
			if !c.Admitted() {
				required++
			}
		}
		spurious += want
	}
	required -= spurious
	if spurious < 100 || required < 100 {
		t.Errorf("%d spurious and %d required denials: the trials do not exercise both", spurious, required)
	}
	t.Logf("%d spurious, %d required denials", spurious, required)
}

// replayFits replays takes of one token at times (µs) through a bucket of
// env, full at 0, in integers scaled by Per, and reports whether it never
// goes below 0.
func replayFits(env Envelope, times []uint32) bool {
	times = slices.Clone(times)
	slices.Sort(times)
	per := int64(env.Per)
	level, last := env.Burst*per, int64(0)
	for _, ts := range times {
		level = min(env.Burst*per, level+env.Limit*1000*(int64(ts)-last))
		last = int64(ts)
		if level -= per; level < 0 {
			return false
		}
	}
	return true
}
