//go:build unix

package jepsen

import (
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// The sweep against the obvious O(n²) reference: every start a, every end
// b, counted directly. Random small inputs, with neg operations, a length
// limit and a minimum end.
func TestSweepMatchesBruteForce(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 1))
		w := &windowSet{maxLen: maxTime}
		for range 1 + rng.IntN(30) {
			s := rng.Int64N(100) - 50 // times may be negative
			w.pos = append(w.pos, wspan{s: s, e: s + rng.Int64N(10), n: 1 + rng.Int64N(5)})
		}
		for range rng.IntN(8) {
			s := rng.Int64N(100) - 50
			e := s + rng.Int64N(20)
			if rng.IntN(4) == 0 {
				e = maxTime
			}
			w.neg = append(w.neg, wspan{s: s, e: e, n: 1 + rng.Int64N(5)})
		}
		if rng.IntN(2) == 0 {
			w.maxLen = rng.Int64N(40)
		}
		if rng.IntN(3) == 0 {
			cut := rng.Int64N(100) - 50
			w.minEnd = func(a int64) int64 {
				if a > cut {
					return maxTime
				}
				return cut + 5
			}
		}
		k1, k2, c := 1+rng.Int64N(7), rng.Int64N(4), rng.Int64N(30)

		got := make(map[int64]int64) // a -> the best excess
		t0 := w.origin()
		K1, K2, C := i128(k1), i128(k2), i128(c)
		sweepWindows(w,
			func(b int64) int128 { return K2.mul(b - t0).neg() },
			func(n int64) int128 { return K1.mul(n) },
			func(a, b int64, best int128) {
				excess := best.add(K2.mul(a - t0)).sub(C)
				if excess.big().Cmp(big.NewInt(k1*countIn(w, a, b)-k2*(b-a)-c)) != 0 {
					t.Fatalf("seed %d: window [%d, %d]: sweep value %v disagrees with its own count", seed, a, b, excess.big())
				}
				got[a] = excess.big().Int64()
			})

		want := make(map[int64]int64)
		for _, p := range w.pos {
			a := p.s
			if _, done := want[a]; done {
				continue
			}
			lowB := a
			if w.minEnd != nil {
				lowB = max(lowB, w.minEnd(a))
			}
			first := true
			for _, q := range w.pos {
				b := q.e
				if b < lowB || (w.maxLen != maxTime && b-a > w.maxLen) {
					continue
				}
				ex := k1*countIn(w, a, b) - k2*(b-a) - c
				if first || ex > want[a] {
					want[a], first = ex, false
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("seed %d: sweep visited %d starts, brute force %d", seed, len(got), len(want))
		}
		for a, ex := range want {
			if got[a] != ex {
				t.Fatalf("seed %d: start %d: sweep's best excess %d, brute force %d", seed, a, got[a], ex)
			}
		}
	}
}

func TestInt128(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	vals := []int64{0, 1, -1, 1 << 62, -(1 << 62), 1<<63 - 1, -1 << 63}
	for range 200 {
		vals = append(vals, int64(rng.Uint64()))
	}
	for _, x := range vals {
		for _, y := range vals[:20] {
			bx, by := big.NewInt(x), big.NewInt(y)
			if x != -1<<63 && y != -1<<63 {
				if got, want := i128(x).mul(y).big(), new(big.Int).Mul(bx, by); got.Cmp(want) != 0 {
					t.Fatalf("%d·%d = %v, want %v", x, y, got, want)
				}
			}
			if got, want := i128(x).add(i128(y)).big(), new(big.Int).Add(bx, by); got.Cmp(want) != 0 {
				t.Fatalf("%d+%d = %v, want %v", x, y, got, want)
			}
			if got, want := i128(x).sub(i128(y)).big(), new(big.Int).Sub(bx, by); got.Cmp(want) != 0 {
				t.Fatalf("%d-%d = %v, want %v", x, y, got, want)
			}
			if got, want := i128(x).less(i128(y)), x < y; got != want {
				t.Fatalf("%d < %d = %v", x, y, got)
			}
			p := new(big.Int).Mul(bx, by)
			if got := fromBig(p).big(); got.Cmp(p) != 0 {
				t.Fatalf("fromBig(%v) = %v", p, got)
			}
		}
	}
}

// Values too large for 128 bits are reported, never checked wrongly.
func TestEnvelopeOutOfRange(t *testing.T) {
	w := &windowSet{pos: []wspan{{s: 0, e: 1, n: 1 << 62}, {s: 0, e: 1, n: 1 << 62}}}
	bd := envelopeBound{k1: new(big.Int).Lsh(big.NewInt(1), 70), k2: big.NewInt(1), c: big.NewInt(1), maxLen: maxTime}
	if ev := evaluateEnvelope(w, bd); ev.fits {
		t.Fatal("evaluate accepted values beyond 128 bits")
	}
}

// The sweep is O(n log n): 60 000 admissions of one key, spread over a
// minute with overlapping intervals, take well under a second.
func TestEnvelopeScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test")
	}
	rng := rand.New(rand.NewPCG(7, 7))
	h := new(testHistory)
	for range 60_000 {
		s := rng.Int64N(int64(time.Minute))
		h.allow("c1", "big", s, s+rng.Int64N(int64(5*time.Millisecond)), 0, 1)
	}
	keys := []KeySpec{{Key: "big", Algorithm: AlgorithmTokenBucket, Limit: 1000, Period: time.Second, Burst: 1000}}
	start := time.Now()
	r := CheckAdmissions(h.events, keys, Options{})
	requireValid(t, r)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("60 000 admissions took %v", d)
	}
	t.Logf("60 000 admissions: %v, %v window starts, max ratio %.3f", time.Since(start), r.Metrics["windows"], r.Metrics["max_ratio"])
	if r.Metrics["admitted"] != 60_000 {
		t.Errorf("admitted = %v", r.Metrics["admitted"])
	}
}
