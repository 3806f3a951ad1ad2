//go:build unix

package jepsen

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// CheckBudget checks the bound with debt (DESIGN.md, "Guarantees") on what a
// Budget's reservations charged to each of its rules' keys (KeySpec.Budget):
// in every window of length Δ,
//
//	charged ≤ B + D + r·(Δ + Λ)
//
// with D the rule's MaxDebt, checked exactly in integers as CheckAdmissions
// checks its bound (and widened the same way by Options.ClockRatePPM). A
// reservation charges its estimate when it is reserved, then at its settle
// the difference to the actual cost: more (debt) or less (a refund, which
// the process may spend again), or gives the whole estimate back when
// cancelled; one never settled stays charged at its estimate. So, for
// each rule:
//
//   - an ok reserve counts its estimate in a window holding its whole
//     interval;
//   - an ok settle above the estimate counts the excess in a window holding
//     its whole interval (a settle whose outcome is unknown may not have
//     charged it: it counts nowhere);
//   - a settle below the estimate, and a cancel, is subtracted from every
//     window that meets its interval extended by 2Λ (a refund after the
//     lease's deadline goes back with the lease's Release, which applies
//     only before the lease expires), or, if its outcome is unknown, every
//     window after its invoke: a refund may have applied there, and
//     subtracting it only loosens the check.
//
// Timing noise can hide an over-charge but never invent one. Each
// reservation is ended at most once: a second ok settle or cancel of the
// same reservation (process, Res, key) is a violation by itself, whatever
// the amounts (the SDK's Settle is idempotent: a retry is a no-op, never a
// second charge), as is a settle or cancel of a reservation never reserved.
// Metrics: max_ratio, max_ratio:<key>, over_charged (tokens above the bound
// in the worst window), reservations, settled, cancelled, unsettled,
// overshoot (tokens settled above their estimates).
func CheckBudget(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).budget()
}

// resKey names one rule's share of one reservation.
type resKey struct {
	process string
	res     uint64
	key     string
}

// budgetBound returns rule k's bound in sweep form: the token bucket's
// admission bound with D added to the burst.
func (an *analysis) budgetBound(k KeySpec) envelopeBound {
	k.Burst += k.MaxDebt
	bd := an.bound(k, admissionsEnvelope)
	bd.formula = "B + D + r·(Δ+Λ)"
	if k.Strict {
		bd.formula = "B + D + r·Δ"
	}
	if an.opts.ClockRatePPM != 0 {
		bd.formula += " with clock-rate error"
	}
	return bd
}

func (an *analysis) budget() Result {
	b := newResultBuilder("budget")
	b.setup(an)
	reserves := map[resKey]*Op{}
	ends := map[resKey][]*Op{}
	var order []resKey
	for i := range an.ops {
		o := &an.ops[i]
		k := resKey{o.Process, o.Invoke.Res, o.Invoke.Key}
		switch o.Op {
		case OpReserve:
			if !o.OK() {
				continue
			}
			if prev := reserves[k]; prev != nil {
				b.violate("%s reservation %d on %q reserved twice, at %s and %s", o.Process, k.res, k.key,
					an.at(prev.Invoke.Time), an.at(o.Invoke.Time))
				continue
			}
			reserves[k] = o
			order = append(order, k)
		case OpSettle, OpCancel:
			ends[k] = append(ends[k], o)
		}
	}
	sets := map[string]*windowSet{}
	set := func(key string) *windowSet {
		if sets[key] == nil {
			sets[key] = &windowSet{}
		}
		return sets[key]
	}
	var settled, cancelled, unsettled, overshoot int64
	for k, list := range ends {
		if reserves[k] == nil {
			for _, o := range list {
				if o.OK() {
					b.violate("%s %s of reservation %d on %q at %s: never reserved", o.Process, o.Op, k.res, k.key, an.at(o.Invoke.Time))
				}
			}
		}
	}
	for _, k := range order {
		r := reserves[k]
		est := r.Invoke.N
		w := set(k.key)
		w.pos = append(w.pos, wspan{s: r.Invoke.Time, e: r.Complete.Time, n: est})
		var done *Op
		for _, o := range ends[k] {
			if o.Invoke.Time < r.Invoke.Time {
				b.violate("%s %s of reservation %d on %q at %s: before its reserve at %s", o.Process, o.Op, k.res, k.key,
					an.at(o.Invoke.Time), an.at(r.Invoke.Time))
				continue
			}
			if o.OK() && done != nil {
				b.violate("%s reservation %d on %q ended twice: %s at %s, then %s at %s", o.Process, k.res, k.key,
					done.Op, an.at(done.Invoke.Time), o.Op, an.at(o.Invoke.Time))
				continue
			}
			if o.Done && o.Complete.Type == Fail {
				continue // not applied
			}
			if o.OK() {
				done = o
			}
			back := est // a cancel gives everything back
			if o.Op == OpSettle {
				back = est - o.Invoke.N
			}
			switch {
			case back > 0:
				// A refund goes into the lease the reservation took
				// from; past that lease's deadline it goes back with the
				// lease's Release, which the cluster applies only before
				// the lease expires: no later than Λ after the settle
				// (twice that, for a clock-rate error). Unknown: any time.
				end := o.End()
				if o.Unknown() {
					end = maxTime
				} else {
					end = min(maxTime-1, end+2*int64(an.keys[k.key].MaxLease))
				}
				w.neg = append(w.neg, wspan{s: o.Invoke.Time, e: end, n: back})
			case back < 0 && o.OK():
				w.pos = append(w.pos, wspan{s: o.Invoke.Time, e: o.Complete.Time, n: -back})
			}
		}
		switch {
		case done == nil:
			unsettled++
		case done.Op == OpCancel:
			cancelled++
		default:
			settled++
			overshoot += max(0, done.Invoke.N-est)
		}
	}

	var overall float64
	var worstOver float64
	for _, k := range an.keyList {
		if k.Budget == "" {
			continue
		}
		w := sets[k.Key]
		if w == nil {
			continue
		}
		bd := an.budgetBound(k)
		ev := evaluateEnvelope(w, bd)
		if !ev.fits {
			b.violate("%s: the history's values are too large to check exactly", k.Key)
			continue
		}
		b.r.Metrics["max_ratio:"+k.Key] = ev.maxRatio
		overall = max(overall, ev.maxRatio)
		for _, v := range ev.violating {
			count := countIn(w, v[0], v[1])
			over := bd.overTokens(count, v[1]-v[0])
			worstOver = max(worstOver, over)
			b.violate("%s: %d tokens charged in [%s, %s] (Δ=%v) above %s = %s", k.Key, count, an.at(v[0]), an.at(v[1]),
				time.Duration(v[1]-v[0]), bd.formula, bd.allowedTokens(v[1]-v[0]))
		}
	}
	b.r.Metrics["max_ratio"] = overall
	b.r.Metrics["over_charged"] = worstOver
	b.r.Metrics["reservations"] = float64(len(order))
	b.r.Metrics["settled"] = float64(settled)
	b.r.Metrics["cancelled"] = float64(cancelled)
	b.r.Metrics["unsettled"] = float64(unsettled)
	b.r.Metrics["overshoot"] = float64(overshoot)
	keys := slices.Sorted(maps.Keys(sets))
	return b.done(fmt.Sprintf("%d rule keys, %d reservations (%d settled, %d cancelled, %d unsettled), overshoot %d tokens; max charged/bound %.3f",
		len(keys), len(order), settled, cancelled, unsettled, overshoot, overall))
}
