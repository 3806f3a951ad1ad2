//go:build unix

package jepsen

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"time"
)

// CheckLogTime checks the cluster's log time (DESIGN.md invariant 1) as
// ok grants echo it (LogTime; 0 means not reported and is skipped):
//
//   - It never goes back: a grant invoked after another completed reads a
//     log time no smaller. A cluster that lost its state in a full restart
//     starts its clock over and fails here.
//   - It never runs faster than the reference clock, by more than the
//     clock-rate error ρ of Options.ClockRatePPM: for any two grants i and
//     j with invoke_i ≤ complete_j, LogTime_j − LogTime_i ≤
//     (complete_j − invoke_i)·(1+ρ). Log time is what refills buckets, so a
//     leader clock drifting beyond the bound shows here first.
//
// Both take O(G·log G) for G grants. Metrics: stamped (grants with a log
// time), max_rate (the largest log-time advance over reference time seen
// between two grants at least a second apart, 0 if none).
func CheckLogTime(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).logTime()
}

func (an *analysis) logTime() Result {
	b := newResultBuilder("log-time")
	b.setup(an)
	var gs []*grantRec
	for _, g := range an.grantRecs {
		if g.logTime != 0 {
			gs = append(gs, g)
		}
	}
	b.r.Metrics["stamped"] = float64(len(gs))

	// Monotonic: for each j, the largest log time of a grant that
	// completed before j was invoked.
	byEnd := slices.Clone(gs)
	slices.SortStableFunc(byEnd, func(x, y *grantRec) int { return cmp.Compare(x.e, y.e) })
	byStart := slices.Clone(gs)
	slices.SortStableFunc(byStart, func(x, y *grantRec) int { return cmp.Compare(x.s, y.s) })
	var before *grantRec
	i := 0
	for _, g := range byStart {
		for ; i < len(byEnd) && byEnd[i].e < g.s; i++ {
			if before == nil || byEnd[i].logTime > before.logTime {
				before = byEnd[i]
			}
		}
		if before != nil && before.logTime > g.logTime {
			b.violate("log time went back by %v: a grant invoked at %s read %v, after a grant that completed at %s read %v",
				time.Duration(before.logTime-g.logTime), an.at(g.s), time.Duration(g.logTime), an.at(before.e), time.Duration(before.logTime))
		}
	}

	// Rate: LogTime_j·D − complete_j·(D+p) ≤ LogTime_i·D − invoke_i·(D+p)
	// for every i invoked no later than j completed; prefix minima over
	// byStart answer that for each j.
	p := an.opts.ClockRatePPM
	if p < 0 || p >= ppmScale {
		p = 0 // reported by the setup check
	}
	value := func(logTime, t int64) int128 {
		return i128(logTime).mul(ppmScale).sub(i128(t - an.origin).mul(ppmScale + p))
	}
	prefix := make([]int128, len(byStart))
	argmin := make([]int, len(byStart))
	for k, g := range byStart {
		v := value(g.logTime, g.s)
		prefix[k], argmin[k] = v, k
		if k > 0 && !v.less(prefix[k-1]) {
			prefix[k], argmin[k] = prefix[k-1], argmin[k-1]
		}
	}
	for _, g := range byStart {
		k := sort.Search(len(byStart), func(k int) bool { return byStart[k].s > g.e }) - 1
		if k < 0 {
			continue
		}
		if prefix[k].less(value(g.logTime, g.e)) {
			o := byStart[argmin[k]]
			b.violate("log time ran fast: it advanced %v between a grant invoked at %s and one completed at %s, only %v later",
				time.Duration(g.logTime-o.logTime), an.at(o.s), an.at(g.e), time.Duration(g.e-o.s))
		}
	}

	// The measured rate, for the report: over pairs at least a second
	// apart, consecutive by invoke.
	maxRate := 0.0
	j := 0
	for _, g := range byStart {
		for j < len(byStart) && byStart[j].s < g.e+int64(time.Second) {
			j++
		}
		if j < len(byStart) {
			h := byStart[j]
			if h.e > g.s {
				maxRate = max(maxRate, float64(h.logTime-g.logTime)/float64(h.e-g.s))
			}
		}
	}
	b.r.Metrics["max_rate"] = maxRate
	return b.done(fmt.Sprintf("%d grants stamped with log time: never back, never faster than the reference clock (max rate %.4f)", len(gs), maxRate))
}
