//go:build unix

package jepsen

import (
	"cmp"
	"slices"
)

// This file places a sliding window's pieced lease (Event.Pieces) on the
// reference clock for CheckGrants and CheckDurability.
//
// A pieced grant of N tokens answered at log time T with life TTL and piece
// width g is m = Pieces pieces: piece i holds N/m tokens (one more for each
// of the last N mod m), and the cluster counts it in its bucket of log time
// [(f+i)·g, (f+i+1)·g), where the last bucket holds T+TTL−1 and f is the
// first; the first piece's bucket may begin before T. The cluster promises
// that pieces, each counted in its bucket, never put more than L in the
// buckets one window of log time shorter than W meets. Log time runs no
// faster than the reference clock (times 1+ρ) and may stall (an election),
// so a piece's bucket maps to no fixed reference time; the checker gives
// piece i the span [s_i, e_i] that surely holds the moment log time reached
// p_i = max(bucket start, T), a point of its bucket:
//
//   - s_i = invoke + (p_i − T)/(1+ρ): the grant applied no earlier than its
//     invoke, and log time ran no faster than 1+ρ since.
//   - e_i = the earliest completion of any answer of the cluster (a grant,
//     denial or release, any key) with a log time at or after p_i: by then
//     log time had reached p_i. With none, e_i is never, and the piece is
//     counted in no window: the check is looser, never wrong.
//
// A window [a, b] of the reference clock shorter than W/(1+ρ) that holds
// [s_i, e_i] then holds the moment log time reached p_i, so the pieces it
// counts have buckets that meet one window of log time shorter than W, and
// the cluster's promise bounds them by L. A release of a pieced lease gives
// back pieces still to come: its span runs to the last e_i of its lease
// (piecesEnd), so that it is subtracted from every window those pieces
// count in.

// logSeen is one answer of the cluster: its log time and when it was
// read; minDone is the earliest read of any answer at this log time or
// later (a suffix minimum over the sorted slice).
type logSeen struct {
	logTime, done, minDone int64
}

// pieced reports whether g is a lease in pieces.
func (g *grantRec) pieced() bool { return g.pieces > 0 && g.pieceNs > 0 && g.ttl > 0 }

// buildLogSeen fills an.logSeen from every completed grant and release
// that carries a log time.
func (an *analysis) buildLogSeen() {
	an.logSeen = an.logSeen[:0]
	for _, list := range [][]*Op{an.grants, an.releases} {
		for _, o := range list {
			if o.Done && o.Complete.LogTime > 0 {
				an.logSeen = append(an.logSeen, logSeen{logTime: o.Complete.LogTime, done: o.Complete.Time})
			}
		}
	}
	slices.SortFunc(an.logSeen, func(a, b logSeen) int {
		return cmp.Or(cmp.Compare(a.logTime, b.logTime), cmp.Compare(a.done, b.done))
	})
	m := maxTime
	for i := len(an.logSeen) - 1; i >= 0; i-- {
		m = min(m, an.logSeen[i].done)
		an.logSeen[i].minDone = m
	}
}

// reachedBy returns the earliest reference time by which log time had
// surely reached t: maxTime if no answer shows it.
func (an *analysis) reachedBy(t int64) int64 {
	i, _ := slices.BinarySearchFunc(an.logSeen, t, func(s logSeen, t int64) int {
		return cmp.Compare(s.logTime, t)
	})
	if i == len(an.logSeen) {
		return maxTime
	}
	return an.logSeen[i].minDone
}

// pieceTokens returns the tokens of piece i of n tokens in m pieces.
func pieceTokens(n, m, i int64) int64 {
	if i >= m-n%m {
		return n/m + 1
	}
	return n / m
}

// pieceSpans returns g's pieces as spans of the reference clock.
func (an *analysis) pieceSpans(g *grantRec) []wspan {
	rho := an.opts.ClockRatePPM
	if rho < 0 || rho >= ppmScale {
		rho = 0 // reported by the setup check
	}
	end := g.logTime + g.ttl
	last := (end - 1) / g.pieceNs
	first := last - g.pieces + 1
	out := make([]wspan, 0, g.pieces)
	for i := range g.pieces {
		n := pieceTokens(g.n, g.pieces, i)
		if n == 0 {
			continue
		}
		p := max((first+i)*g.pieceNs, g.logTime)
		s := g.s + mulDiv(p-g.logTime, ppmScale, ppmScale+rho)
		e := an.reachedBy(p)
		if p == g.logTime {
			e = min(e, g.e) // the grant's own answer
		}
		if e == maxTime {
			continue // never placed: counted in no window
		}
		out = append(out, wspan{s: s, e: max(e, s), n: n})
	}
	return out
}

// piecesEnd returns the latest e_i of the pieces of lease id (0 if it was
// not a pieced lease, or none was placed).
func (an *analysis) piecesEnd(id uint64) int64 {
	var end int64
	for _, g := range an.leases[id] {
		if !g.pieced() {
			continue
		}
		for _, sp := range an.pieceSpans(g) {
			end = max(end, sp.e)
		}
	}
	return end
}

// mulDiv returns x·a/b rounded down, for x ≥ 0 and a ≤ b, without
// overflow for any x.
func mulDiv(x, a, b int64) int64 {
	return x/b*a + x%b*a/b
}
