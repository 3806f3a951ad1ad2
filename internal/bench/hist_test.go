package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsTileTheRange(t *testing.T) {
	prevHi := int64(-1)
	for i := range bucketCount {
		lo, hi := bucketRange(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, want %d (right after bucket %d)", i, lo, prevHi+1, i-1)
		}
		if hi < lo {
			t.Fatalf("bucket %d = [%d, %d], empty", i, lo, hi)
		}
		for _, v := range []int64{lo, hi, lo + (hi-lo)/2} {
			if got := bucketOf(v); got != i {
				t.Fatalf("bucketOf(%d) = %d, want %d", v, got, i)
			}
		}
		// Relative width: at most 1/32 of the bucket's smallest value.
		if lo >= subCount && (hi-lo+1)*subCount > lo {
			t.Fatalf("bucket %d = [%d, %d] is wider than 1/%d of %d", i, lo, hi, subCount, lo)
		}
		prevHi = hi
	}
	if prevHi != 1<<63-1 {
		t.Fatalf("last bucket ends at %d, want MaxInt64", prevHi)
	}
}

func TestQuantileAgainstSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		gen  func() int64
	}{
		{"uniform 0-100ns", func() int64 { return r.Int64N(100) }},
		{"log-uniform to 1s", func() int64 { return int64(1) << r.IntN(30) * (1 + r.Int64N(1000)) / 1000 }},
		{"bimodal 40ns/2ms", func() int64 {
			if r.IntN(100) == 0 {
				return 2_000_000 + r.Int64N(500_000)
			}
			return 40 + r.Int64N(10)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistogram()
			var vals []int64
			for range 100_000 {
				v := tc.gen()
				vals = append(vals, v)
				h.Record(time.Duration(v))
			}
			slices.Sort(vals)
			for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
				rank := max(1, int(float64(len(vals))*q+0.999999999))
				exact := vals[rank-1]
				got := int64(h.Quantile(q))
				if got < exact || float64(got-exact) > float64(exact)/subCount+1 {
					t.Errorf("Quantile(%v) = %d, exact %d: want within [exact, exact·(1+1/32)]", q, got, exact)
				}
			}
			if h.Count() != uint64(len(vals)) || int64(h.Max()) != vals[len(vals)-1] {
				t.Errorf("count %d max %v, want %d and %d", h.Count(), h.Max(), len(vals), vals[len(vals)-1])
			}
		})
	}
}

func TestHistogramEdges(t *testing.T) {
	h := NewHistogram()
	if h.Quantile(0.5) != 0 || h.Max() != 0 || h.Mean() != 0 {
		t.Fatalf("empty histogram: p50 %v max %v mean %v, want 0", h.Quantile(0.5), h.Max(), h.Mean())
	}
	h.Record(-5) // a clock step backwards counts as 0
	h.Record(time.Duration(1<<63 - 1))
	if got := h.Quantile(0); got != 0 {
		t.Errorf("p0 = %v, want 0", got)
	}
	if got := h.Quantile(1); got != time.Duration(1<<63-1) {
		t.Errorf("p100 = %v, want MaxInt64", got)
	}

	a, b := NewHistogram(), NewHistogram()
	for i := range 10 {
		a.Record(time.Duration(i))
		b.Record(time.Duration(100 + i))
	}
	a.Merge(b)
	a.Merge(NewHistogram())
	if a.Count() != 20 || a.Quantile(0.5) != 9 || a.Quantile(0.55) != 101 || a.Max() != 109 {
		t.Errorf("merged: count %d p50 %v p55 %v max %v, want 20, 9ns, 101ns (100's bucket is [100, 101]), 109ns",
			a.Count(), a.Quantile(0.5), a.Quantile(0.55), a.Max())
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewHistogram()
	b.ReportAllocs()
	v := time.Duration(1)
	for b.Loop() {
		h.Record(v)
		v = v*3 + 7&0xffffff
	}
}
