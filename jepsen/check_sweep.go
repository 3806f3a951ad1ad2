//go:build unix

package jepsen

import (
	"cmp"
	"math/big"
	"math/bits"
	"slices"
	"sort"
)

// This file holds the window sweep the envelope checkers share, with the
// exact 128-bit arithmetic it runs on.
//
// The problem: given operations with intervals [s, e] and token counts, find
// the windows [a, b] for which
//
//	K1·(tokens of "pos" operations whose whole interval lies in [a, b])
//	  − K1·(tokens of "neg" operations whose interval meets [a, b])
//	  − K2·(b − a) − C  >  0.
//
// The worst window for a set of counted operations is the smallest that
// holds them (a larger one only allows more and subtracts more), so a is
// always some pos start and b some pos end. The sweep visits every start a
// in decreasing order, keeping a segment tree indexed by the distinct pos
// ends b whose leaf j holds K1·count(a, b_j) − K2·b_j: lowering a past a pos
// start adds K1·n to every leaf b ≥ e (the operation now fits every window
// ending at or after e), and past a neg end subtracts K1·n from every leaf
// b ≥ s. One range-maximum query then gives a's worst window. With P pos and
// R neg operations that is O((P+R)·log P) time and O(P + R) space, instead
// of the O(P²) of trying every pair; 50 000 admissions take a few tens of
// milliseconds.

// int128 is a signed 128-bit integer, two's complement. The sweep checks its
// inputs' magnitudes with math/big first (sweepFits), so no operation here
// overflows.
type int128 struct {
	hi int64
	lo uint64
}

// i128 returns x as an int128.
func i128(x int64) int128 { return int128{hi: x >> 63, lo: uint64(x)} }

func (x int128) add(y int128) int128 {
	lo, c := bits.Add64(x.lo, y.lo, 0)
	return int128{hi: x.hi + y.hi + int64(c), lo: lo}
}

func (x int128) neg() int128 {
	lo, b := bits.Sub64(0, x.lo, 0)
	return int128{hi: -x.hi - int64(b), lo: lo}
}

func (x int128) sub(y int128) int128 { return x.add(y.neg()) }

func (x int128) less(y int128) bool {
	if x.hi != y.hi {
		return x.hi < y.hi
	}
	return x.lo < y.lo
}

func (x int128) sign() int {
	switch {
	case x.hi < 0:
		return -1
	case x.hi == 0 && x.lo == 0:
		return 0
	}
	return 1
}

// mul returns x·n. The product must fit (sweepFits).
func (x int128) mul(n int64) int128 {
	if n < 0 {
		return x.mul(-n).neg()
	}
	if x.hi < 0 {
		return x.neg().mul(n).neg()
	}
	hi, lo := bits.Mul64(x.lo, uint64(n))
	return int128{hi: int64(hi) + x.hi*n, lo: lo}
}

func (x int128) big() *big.Int {
	b := new(big.Int).SetInt64(x.hi)
	b.Lsh(b, 64)
	return b.Add(b, new(big.Int).SetUint64(x.lo))
}

// fromBig converts b, which must fit in 126 bits.
func fromBig(b *big.Int) int128 {
	var lo, hi big.Int
	lo.And(b, new(big.Int).SetUint64(^uint64(0)))
	hi.Rsh(b, 64) // arithmetic shift: floor division, right for negatives
	return int128{hi: hi.Int64(), lo: lo.Uint64()}
}

// f64 is a float64 with the methods the segment tree needs, for the
// approximate ratio search (maxRatio).
type f64 float64

func (x f64) add(y f64) f64   { return x + y }
func (x f64) less(y f64) bool { return x < y }

// treeValue is what a maxTree holds.
type treeValue[T any] interface {
	comparable
	add(T) T
	less(T) bool
}

// maxTree is a segment tree over leaves 0..n-1 with range add and range
// maximum (with the leftmost maximising leaf). Each node's mx includes every
// add applied at or above it; lz holds the adds not yet pushed to its
// children.
type maxTree[T treeValue[T]] struct {
	n   int
	mx  []T
	arg []int32
	lz  []T
}

func newMaxTree[T treeValue[T]](n int, leaf func(int) T) *maxTree[T] {
	t := &maxTree[T]{n: n, mx: make([]T, 4*n), arg: make([]int32, 4*n), lz: make([]T, 4*n)}
	t.build(1, 0, n-1, leaf)
	return t
}

func (t *maxTree[T]) build(node, l, r int, leaf func(int) T) {
	if l == r {
		t.mx[node], t.arg[node] = leaf(l), int32(l)
		return
	}
	m := (l + r) / 2
	t.build(2*node, l, m, leaf)
	t.build(2*node+1, m+1, r, leaf)
	t.pull(node)
}

func (t *maxTree[T]) pull(node int) {
	a, b := 2*node, 2*node+1
	if t.mx[a].less(t.mx[b]) {
		t.mx[node], t.arg[node] = t.mx[b], t.arg[b]
	} else {
		t.mx[node], t.arg[node] = t.mx[a], t.arg[a]
	}
}

func (t *maxTree[T]) push(node int) {
	var zero T
	if t.lz[node] == zero {
		return
	}
	for _, c := range [2]int{2 * node, 2*node + 1} {
		t.mx[c] = t.mx[c].add(t.lz[node])
		t.lz[c] = t.lz[c].add(t.lz[node])
	}
	t.lz[node] = zero
}

// addRange adds v to leaves [l, r].
func (t *maxTree[T]) addRange(l, r int, v T) {
	if l <= r {
		t.addNode(1, 0, t.n-1, l, r, v)
	}
}

func (t *maxTree[T]) addNode(node, nl, nr, l, r int, v T) {
	if r < nl || nr < l {
		return
	}
	if l <= nl && nr <= r {
		t.mx[node] = t.mx[node].add(v)
		t.lz[node] = t.lz[node].add(v)
		return
	}
	t.push(node)
	m := (nl + nr) / 2
	t.addNode(2*node, nl, m, l, r, v)
	t.addNode(2*node+1, m+1, nr, l, r, v)
	t.pull(node)
}

// query returns the maximum of leaves [l, r] (l <= r) and its leftmost leaf.
func (t *maxTree[T]) query(l, r int) (T, int) {
	return t.queryNode(1, 0, t.n-1, l, r)
}

func (t *maxTree[T]) queryNode(node, nl, nr, l, r int) (T, int) {
	if l <= nl && nr <= r {
		return t.mx[node], int(t.arg[node])
	}
	t.push(node)
	m := (nl + nr) / 2
	switch {
	case r <= m:
		return t.queryNode(2*node, nl, m, l, r)
	case l > m:
		return t.queryNode(2*node+1, m+1, nr, l, r)
	}
	a, ia := t.queryNode(2*node, nl, m, l, r)
	b, ib := t.queryNode(2*node+1, m+1, nr, l, r)
	if a.less(b) {
		return b, ib
	}
	return a, ia
}

// wspan is an operation on the reference clock: its interval [s, e] (e is
// maxTime when it may take effect at any time after s) and its tokens.
type wspan struct {
	s, e int64
	n    int64
}

// windowSet is one sweep's input: which operations count, and which windows
// are examined.
type windowSet struct {
	pos []wspan // counted in a window that holds their whole interval
	neg []wspan // subtracted from a window their interval meets
	// maxLen bounds the windows examined: b - a <= maxLen (maxTime: no
	// bound).
	maxLen int64
	// minEnd, if set, makes the windows starting at a end at or after
	// minEnd(a); maxTime skips a.
	minEnd func(a int64) int64
}

// origin returns the earliest time in w, the zero the sweep measures from
// to keep K2·b small.
func (w *windowSet) origin() int64 {
	t := maxTime
	for _, p := range w.pos {
		t = min(t, p.s)
	}
	return t
}

// sweepFits reports whether every value a sweep with these constants forms
// stays below 2^125 in magnitude, so that int128 cannot overflow.
func sweepFits(w *windowSet, k1, k2, c *big.Int) bool {
	total := new(big.Int)
	t0, tEnd := w.origin(), int64(0)
	for _, sp := range [2][]wspan{w.pos, w.neg} {
		for _, p := range sp {
			total.Add(total, new(big.Int).Abs(big.NewInt(p.n)))
			if p.e != maxTime {
				tEnd = max(tEnd, p.e)
			}
		}
	}
	m := new(big.Int).Mul(total, k1)
	m.Add(m, new(big.Int).Mul(k2, new(big.Int).Sub(big.NewInt(max(tEnd, t0)), big.NewInt(t0))))
	m.Add(m, new(big.Int).Abs(c))
	m.Add(m, new(big.Int).Abs(k1)) // one token of headroom for reports
	return m.BitLen() < 125
}

// sweepWindows visits every window start a (a pos start, in decreasing order) with
// the best window [a, b] that starts there: the one maximising
// weight-sum + leaf(b), as summed by the tree. leaf(b) is the value of an
// empty window ending at b, weight(n) the value of n tokens (n < 0 for neg
// operations).
func sweepWindows[T treeValue[T]](w *windowSet, leaf func(b int64) T, weight func(n int64) T, visit func(a, b int64, best T)) {
	if len(w.pos) == 0 {
		return
	}
	starts := make([]int64, 0, len(w.pos))
	ends := make([]int64, 0, len(w.pos))
	for _, p := range w.pos {
		starts = append(starts, p.s)
		ends = append(ends, p.e)
	}
	slices.Sort(starts)
	starts = slices.Compact(starts)
	slices.Sort(ends)
	ends = slices.Compact(ends)
	firstEndAtOrAfter := func(t int64) int { return sort.Search(len(ends), func(i int) bool { return ends[i] >= t }) }

	tree := newMaxTree(len(ends), func(j int) T { return leaf(ends[j]) })
	pos := slices.Clone(w.pos)
	slices.SortFunc(pos, func(x, y wspan) int { return cmp.Compare(y.s, x.s) })
	neg := slices.Clone(w.neg)
	slices.SortFunc(neg, func(x, y wspan) int { return cmp.Compare(y.e, x.e) })

	pi, ni := 0, 0
	for i := len(starts) - 1; i >= 0; i-- {
		a := starts[i]
		for ; pi < len(pos) && pos[pi].s >= a; pi++ {
			tree.addRange(firstEndAtOrAfter(pos[pi].e), len(ends)-1, weight(pos[pi].n))
		}
		for ; ni < len(neg) && neg[ni].e >= a; ni++ {
			tree.addRange(firstEndAtOrAfter(neg[ni].s), len(ends)-1, weight(-neg[ni].n))
		}
		lowB := a
		if w.minEnd != nil {
			lowB = max(lowB, w.minEnd(a))
			if lowB == maxTime {
				continue
			}
		}
		lo := firstEndAtOrAfter(lowB)
		hi := len(ends) - 1
		if w.maxLen != maxTime && a <= maxTime-1-w.maxLen { // a+maxLen+1 fits
			hi = firstEndAtOrAfter(a+w.maxLen+1) - 1
		}
		if lo > hi {
			continue
		}
		best, j := tree.query(lo, hi)
		visit(a, ends[j], best)
	}
}

// countIn returns the net tokens of w counted in [a, b]: pos operations
// whose interval lies inside, less neg operations whose interval meets it.
// It is the sweep's answer for one window, computed directly.
func countIn(w *windowSet, a, b int64) int64 {
	var n int64
	for _, p := range w.pos {
		if p.s >= a && p.e <= b {
			n += p.n
		}
	}
	for _, p := range w.neg {
		if p.s <= b && p.e >= a {
			n -= p.n
		}
	}
	return n
}
