package bench

import (
	"math"
	"math/bits"
	"time"
)

// subBits is the log2 of the sub-buckets per power of two: 32 of them, so a
// recorded value is known to within 1/32 (3.1%) of itself.
const subBits = 5

const (
	subCount = 1 << subBits
	// bucketCount covers every non-negative int64: values below subCount
	// exactly, then subCount buckets for each exponent subBits..62.
	bucketCount = (63 - subBits + 1) * subCount
)

// A Histogram counts durations in log-linear buckets, in the manner of
// HdrHistogram: exact below 32ns, then 32 equal buckets per power of two.
// Recording is an index computation and an increment, with no allocation and
// no sorting; quantiles are read from the bucket counts. A Histogram is not
// safe for concurrent use: give each goroutine its own and Merge them.
type Histogram struct {
	counts   [bucketCount]uint64
	n        uint64
	min, max int64
	sum      float64 // for the mean; not used for quantiles
}

// NewHistogram returns an empty Histogram.
func NewHistogram() *Histogram { return &Histogram{min: math.MaxInt64} }

// bucketOf returns the bucket of v ≥ 0.
func bucketOf(v int64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1 // ≥ subBits
	m := int(v>>(e-subBits)) & (subCount - 1)
	return (e-subBits+1)*subCount + m
}

// bucketRange returns the smallest and largest value bucket i holds.
func bucketRange(i int) (lo, hi int64) {
	if i < subCount {
		return int64(i), int64(i)
	}
	e := i/subCount + subBits - 1
	m := int64(i % subCount)
	width := int64(1) << (e - subBits)
	lo = (subCount + m) * width
	return lo, lo + width - 1
}

// Record adds one duration; negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)]++
	h.n++
	h.min = min(h.min, v)
	h.max = max(h.max, v)
	h.sum += float64(v)
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
	h.sum += o.sum
}

// Count returns the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest value recorded, 0 if none.
func (h *Histogram) Max() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.max)
}

// Mean returns the mean of the values recorded, 0 if none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of the recorded values: the
// upper end of the bucket holding the value of rank ⌈q·n⌉, clamped to the
// values actually seen, so it is never below the true quantile and at most
// 1/32 above it. 0 if nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketRange(i)
			return time.Duration(min(max(hi, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
