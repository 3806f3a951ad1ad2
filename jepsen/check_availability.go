//go:build unix

package jepsen

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"
)

// CheckAvailability measures how the cluster served through the faults. It
// passes unless a generous bound of Options is set and missed.
//
//   - Failover gap: for each kill, pause or partition whose targets include
//     the leader (Value "leader:n2"), the time from the fault's invoke to the
//     completion of the first ok grant invoked after it. Details list each
//     one, with the admissions that completed meanwhile (clients spending
//     live leases, or their failure policy).
//   - Recovery: the time from the last heal (heal, resume or restart) to
//     the completion of the first ok grant invoked after it.
//   - Efficiency: per key, tokens admitted over what the envelope allows
//     across the key's active span D (first allow invoke to last allow
//     completion): B + r·D for a token bucket, L + L·D/W for a sliding
//     window; per group of keys (KeySpec.Group), the sum over its keys
//     instead; overall, the sum of admitted over the sum of allowed, light
//     keys left out.
//
// Metrics: failovers, failover_p50_ms, failover_max_ms (a failover that
// never ended counts up to the history's last event), failover_unended,
// failover_admissions, failover_leased_admissions, recovery_ms,
// efficiency, efficiency:<key>, efficiency:group:<group>.
func CheckAvailability(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).availability()
}

// leaderFault reports whether o is a fault aimed at the leader.
func leaderFault(o *Op) bool {
	switch o.Op {
	case OpKill, OpPause, OpPartition:
		_, leader := parseTargets(o.Invoke.Value)
		return leader
	}
	return false
}

// grantTimeline answers "when did the first ok grant invoked at or after t
// complete?".
type grantTimeline struct {
	invokes []int64 // ascending
	firstOK []int64 // firstOK[i]: the earliest completion among grants i..
}

func (an *analysis) grantTimeline() grantTimeline {
	var ok []*Op
	for _, o := range an.grants {
		if o.OK() {
			ok = append(ok, o)
		}
	}
	slices.SortStableFunc(ok, func(x, y *Op) int { return cmp.Compare(x.Invoke.Time, y.Invoke.Time) })
	g := grantTimeline{invokes: make([]int64, len(ok)), firstOK: make([]int64, len(ok))}
	next := maxTime
	for i := len(ok) - 1; i >= 0; i-- {
		next = min(next, ok[i].Complete.Time)
		g.invokes[i], g.firstOK[i] = ok[i].Invoke.Time, next
	}
	return g
}

// next returns the completion of the first ok grant invoked at or after t,
// or maxTime.
func (g grantTimeline) next(t int64) int64 {
	i := sort.Search(len(g.invokes), func(i int) bool { return g.invokes[i] >= t })
	if i == len(g.invokes) {
		return maxTime
	}
	return g.firstOK[i]
}

func (an *analysis) availability() Result {
	b := newResultBuilder("availability")
	b.setup(an)
	grants := an.grantTimeline()
	last := an.origin
	for i := range an.ops {
		last = max(last, an.ops[i].Invoke.Time)
		if an.ops[i].Done {
			last = max(last, an.ops[i].Complete.Time)
		}
	}

	// Failovers.
	var gaps []int64
	var unended, during, duringLeased int
	for _, f := range an.nemesis {
		if !leaderFault(f) {
			continue
		}
		start := f.Invoke.Time
		end := grants.next(start)
		ended := end != maxTime
		if !ended {
			unended++
			end = max(last, start)
		}
		gaps = append(gaps, end-start)
		n, leased := 0, 0
		for _, o := range an.allows {
			if o.OK() && o.Complete.Time >= start && o.Complete.Time <= end {
				n++
				if o.Complete.Lease != 0 {
					leased++
				}
			}
		}
		during += n
		duringLeased += leased
		what := fmt.Sprintf("next grant after %v", time.Duration(end-start))
		if !ended {
			what = fmt.Sprintf("no grant in the %v left of the history", time.Duration(end-start))
		}
		b.r.Details = append(b.r.Details, fmt.Sprintf("%s %s at %s: %s; %d admissions meanwhile (%d from leases)",
			f.Op, f.Invoke.Value, an.at(start), what, n, leased))
		if lim := an.opts.MaxFailover; lim > 0 && (!ended || end-start > int64(lim)) {
			b.violate("%s %s at %s: %s, bound %v", f.Op, f.Invoke.Value, an.at(start), what, lim)
		}
	}
	b.r.Metrics["failovers"] = float64(len(gaps))
	b.r.Metrics["failover_unended"] = float64(unended)
	b.r.Metrics["failover_admissions"] = float64(during)
	b.r.Metrics["failover_leased_admissions"] = float64(duringLeased)
	if len(gaps) > 0 {
		slices.Sort(gaps)
		b.r.Metrics["failover_p50_ms"] = float64(gaps[(len(gaps)+1)/2-1]) / 1e6
		b.r.Metrics["failover_max_ms"] = float64(gaps[len(gaps)-1]) / 1e6
	}

	// Recovery after the last heal.
	healed := int64(-1)
	for _, o := range an.nemesis {
		switch o.Op {
		case OpHeal, OpResume, OpRestart, OpJoin, OpLeave:
			t := o.Invoke.Time
			if o.Done {
				t = o.Complete.Time
			}
			healed = max(healed, t)
		}
	}
	if healed >= 0 {
		rec := grants.next(healed)
		if rec == maxTime {
			b.r.Details = append(b.r.Details, fmt.Sprintf("no grant after the last heal at %s", an.at(healed)))
			if an.opts.MaxRecovery > 0 {
				b.violate("no grant after the last heal at %s", an.at(healed))
			}
		} else {
			b.r.Metrics["recovery_ms"] = float64(rec-healed) / 1e6
			b.r.Details = append(b.r.Details, fmt.Sprintf("first grant %v after the last heal at %s", time.Duration(rec-healed), an.at(healed)))
			if lim := an.opts.MaxRecovery; lim > 0 && rec-healed > int64(lim) {
				b.violate("first grant %v after the last heal at %s, bound %v", time.Duration(rec-healed), an.at(healed), lim)
			}
		}
	}

	// Efficiency.
	var sumAdmitted, sumAllowed float64
	type sums struct{ admitted, allowed float64 }
	groups := map[string]*sums{}
	var groupOrder []string
	for _, k := range an.keyList {
		first, lastDone := maxTime, int64(math.MinInt64)
		var admitted int64
		for _, o := range an.allowsByKey[k.Key] {
			first = min(first, o.Invoke.Time)
			if o.Done {
				lastDone = max(lastDone, o.Complete.Time)
			}
			if o.OK() {
				admitted += allowTokens(o)
			}
		}
		if first == maxTime || lastDone < first {
			continue
		}
		d := float64(lastDone - first)
		rate := float64(k.Limit) / float64(k.Period)
		burst := float64(k.Burst)
		if k.Algorithm == AlgorithmSlidingWindow {
			burst = float64(k.Limit)
		}
		allowed := burst + rate*d
		if g := k.Group; g != "" {
			if groups[g] == nil {
				groups[g] = &sums{}
				groupOrder = append(groupOrder, g)
			}
			groups[g].admitted += float64(admitted)
			groups[g].allowed += allowed
		} else {
			b.r.Metrics["efficiency:"+k.Key] = float64(admitted) / allowed
		}
		if k.Light {
			continue
		}
		sumAdmitted += float64(admitted)
		sumAllowed += allowed
	}
	var groupSummary string
	for _, g := range groupOrder {
		eff := groups[g].admitted / groups[g].allowed
		b.r.Metrics["efficiency:group:"+g] = eff
		groupSummary += fmt.Sprintf(", group %s %.3f", g, eff)
	}
	eff := 0.0
	if sumAllowed > 0 {
		eff = sumAdmitted / sumAllowed
		b.r.Metrics["efficiency"] = eff
		if lim := an.opts.MinEfficiency; lim > 0 && eff < lim {
			b.violate("efficiency %.3f below the bound %.3f", eff, lim)
		}
	}
	summary := fmt.Sprintf("efficiency %.3f%s; %d leader faults", eff, groupSummary, len(gaps))
	if len(gaps) > 0 {
		summary += fmt.Sprintf(", failover p50 %v max %v", time.Duration(gaps[(len(gaps)+1)/2-1]), time.Duration(gaps[len(gaps)-1]))
	}
	if r, ok := b.r.Metrics["recovery_ms"]; ok {
		summary += fmt.Sprintf("; recovery %v", time.Duration(r*1e6))
	}
	return b.done(summary)
}
