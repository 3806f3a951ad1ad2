//go:build unix

package jepsen

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"slices"
	"sort"
	"time"
)

// CheckAdmissions checks the over-admission bound of DESIGN.md invariant 7 on
// what clients admitted (ok allows), per key.
//
// An admission counts in a window [a, b] only if its whole [invoke,
// complete] interval lies inside, so timing noise can hide an
// over-admission but never invent one. Every window whose ends are an
// admission's invoke (a) and an admission's completion (b) is examined;
// those are the worst windows, since any other holds the same admissions
// and allows more. With A admissions of a key this takes O(A·log A) time:
// a sort, then one sweep over the window starts with a segment tree over
// the window ends (60 000 admissions take well under a second), where
// trying every pair would be O(A²).
//
// Token bucket of rate r = Limit/Period, burst B, longest lease Λ =
// MaxLease: in every window of length Δ,
//
//	admitted ≤ B + r·(Δ + Λ)      (Strict: B + r·Δ),
//
// checked exactly in integers as admitted·Period ≤ B·Period + Limit·(Δ+Λ).
// With Options.ClockRatePPM = ρ the refill term is r·(Δ+Λ)·(1+ρ) (Strict:
// r·Δ·(1+ρ) + r·Λ·ρ, as the reserve of r·Λ is counted on a clock that may
// run fast by ρ).
//
// Sliding window of Limit L over Period W: at most L in every window
// shorter than W (shorter than W/(1+ρ) with a clock-rate error). The
// cluster counts a lease against every window its life overlaps, so the
// bound holds for admissions directly, wherever their lease was granted.
//
// A call decided centrally counts from its grant's answer
// (centralAdmittedFrom), when the SDK admits it, unless its key is a
// strict token bucket with no leases (spentWithinSpan).
//
// Admissions the failure policy made (Value "fallback") are counted unless
// Options.ExcludeFallback. Metrics: max_ratio (the largest admitted/allowed
// over all windows and keys), max_ratio:<key>, over_admitted (tokens above
// the bound in the worst window, 0 when valid), admitted, fallback,
// windows (window starts examined).
func CheckAdmissions(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).admissionEnvelope()
}

// CheckGrants checks the bound the limit itself sets on what the cluster
// granted (ok grants), per key. It catches a bucket that refills too fast
// or comes back full after a restart even when no client spends the tokens.
//
// Tokens granted in a window [a, b] count when the grant's whole interval
// lies inside (it certainly applied inside). A Release returns only unused
// tokens, which the cluster may grant again, so the bound is on net grants:
// every release whose interval meets the window, or that may have applied
// at any time after its invoke (info, fail or incomplete), is subtracted.
// The bucket's level x obeys x(b) = x(a) + refill + refunds − grants ≥ 0
// with x(a) ≤ B and refill ≤ r·Δ, and the refunds are at most the released
// tokens, so
//
//	granted − released ≤ B + r·Δ        (token bucket; r·Δ·(1+ρ) with drift),
//	granted − released ≤ L              (sliding window, any window shorter
//	                                     than W),
//
// the Λ term dropping out because a grant debits the bucket when it
// applies. A sliding window's lease granted in pieces (Event.Pieces) counts
// piece by piece, each over the reference time its bucket of log time
// surely began in (check_pieces.go). Retries of one request (same ClientID,
// Seq and answer) count once. Metrics as CheckAdmissions, with granted and
// released.
func CheckGrants(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).grantEnvelope()
}

// CheckDurability checks both envelopes over the windows that span a
// full-cluster outage: windows that start no later than the moment every
// node was down (the last kill's completion) and end no earlier than the
// first restart after it. A cluster that loses its state in the outage
// (a bucket back to full, a grant forgotten) grants or admits more than the
// bound across it. The nodes are Options.Nodes or inferred (see Options).
// Without a full outage there is nothing to check and the result is valid.
// Metrics: outages, and as CheckAdmissions with prefixes admissions_ and
// grants_.
func CheckDurability(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).durability()
}

// envelopeKind says what an envelope counts.
type envelopeKind int

const (
	admissionsEnvelope envelopeKind = iota + 1
	grantsEnvelope
)

func (k envelopeKind) String() string {
	if k == admissionsEnvelope {
		return "admissions"
	}
	return "grants"
}

// envelopeBound is a key's bound in sweep form: a window [a, b] holding
// count tokens violates it when count·k1 > c + k2·(b−a), or when b−a >
// maxLen is never examined.
type envelopeBound struct {
	k1, k2, c *big.Int
	maxLen    int64
	formula   string
}

// bound returns k's envelope for kind.
func (an *analysis) bound(k KeySpec, kind envelopeKind) envelopeBound {
	p := an.opts.ClockRatePPM
	if p < 0 || p >= ppmScale {
		p = 0 // reported by the setup check
	}
	if k.Algorithm == AlgorithmSlidingWindow {
		w := new(big.Int).Mul(big.NewInt(int64(k.Period)), big.NewInt(ppmScale))
		w.Quo(w, big.NewInt(ppmScale+p))
		return envelopeBound{
			k1: big.NewInt(1), k2: new(big.Int), c: big.NewInt(k.Limit),
			maxLen: w.Int64() - 1, formula: "L",
		}
	}
	period, limit := big.NewInt(int64(k.Period)), big.NewInt(k.Limit)
	k1 := new(big.Int).Mul(period, big.NewInt(ppmScale))
	k2 := new(big.Int).Mul(limit, big.NewInt(ppmScale+p))
	c := new(big.Int).Mul(big.NewInt(k.Burst), k1)
	formula := "B + r·Δ"
	if kind == admissionsEnvelope {
		lam := big.NewInt(int64(k.MaxLease))
		if k.Strict {
			c.Add(c, new(big.Int).Mul(new(big.Int).Mul(limit, big.NewInt(p)), lam))
		} else {
			c.Add(c, new(big.Int).Mul(k2, lam))
			formula = "B + r·(Δ+Λ)"
		}
	}
	if p != 0 {
		formula += " with clock-rate error"
	}
	g := new(big.Int).GCD(nil, nil, k1, k2)
	if c.Sign() != 0 {
		g.GCD(nil, nil, g, c)
	}
	k1.Quo(k1, g)
	k2.Quo(k2, g)
	c.Quo(c, g)
	return envelopeBound{k1: k1, k2: k2, c: c, maxLen: maxTime, formula: formula}
}

// spentWithinSpan reports whether k's bound holds for central admissions
// counted from their grant's answer (centralAdmittedFrom), which is when
// the SDK admits them: a sliding window's central grant is spent within the
// span it was counted over, a token bucket's within its MaxLease Λ of its
// log time, as the bound's proof needs (fsm's Machine.acquire), or refused.
// Not a strict bucket whose reserve ⌈r·Λ⌉ is its whole burst: it grants no
// leases, so Λ is 0 and a central answer, a round trip after its log time,
// is always later than the proof covers (fsm/DESIGN.md, "A token bucket's
// central grant spent late"); counted from their answers its admissions
// exceed B + r·Δ by up to r times a round trip at usual latencies, so they
// are counted from their invoke, as before.
func spentWithinSpan(k KeySpec) bool {
	if k.Algorithm == AlgorithmSlidingWindow {
		return true
	}
	return !k.Strict || !leaseless(k)
}

// leaseless reports whether strict bucket k's reserve ⌈Limit·MaxLease/Period⌉
// is at least its burst, as the cluster computes it: exactly, since
// Limit·MaxLease may overflow int64.
func leaseless(k KeySpec) bool {
	reserve := new(big.Int).Mul(big.NewInt(k.Limit), big.NewInt(int64(k.MaxLease)))
	period := big.NewInt(int64(k.Period))
	reserve.Add(reserve, new(big.Int).Sub(period, big.NewInt(1)))
	reserve.Quo(reserve, period)
	return reserve.Cmp(big.NewInt(k.Burst)) >= 0
}

// windowSet returns what kind counts for key k.
func (an *analysis) windowSet(k KeySpec, kind envelopeKind) *windowSet {
	w := &windowSet{}
	if kind == admissionsEnvelope {
		for _, o := range an.allowsByKey[k.Key] {
			if o.OK() && !(an.opts.ExcludeFallback && isFallback(o)) {
				s := o.Invoke.Time
				if spentWithinSpan(k) {
					s = an.centralAdmittedFrom(o)
				}
				w.pos = append(w.pos, wspan{s: s, e: o.Complete.Time, n: allowTokens(o)})
			}
		}
		return w
	}
	for _, g := range an.grantRecsByKey[k.Key] {
		if g.n > 0 && g.pieced() {
			w.pos = append(w.pos, an.pieceSpans(g)...)
		} else if g.n > 0 {
			w.pos = append(w.pos, wspan{s: g.s, e: g.e, n: g.n})
		}
	}
	for _, o := range an.releases {
		if o.Invoke.N <= 0 {
			continue
		}
		// A release whose key is unknown may belong to any key: counting it
		// against every key only loosens the check.
		if key := an.releaseKey(o); key == k.Key || key == "" {
			// A pieced lease's release gives back pieces still to
			// come, counted where they would have been.
			w.neg = append(w.neg, wspan{s: o.Invoke.Time, e: max(o.End(), an.piecesEnd(o.Invoke.Lease)), n: o.Invoke.N})
		}
	}
	return w
}

// releaseKey returns the key a release gives tokens back to: its own Key,
// else its lease's, else "".
func (an *analysis) releaseKey(o *Op) string {
	if o.Invoke.Key != "" {
		return o.Invoke.Key
	}
	if recs := an.leases[o.Invoke.Lease]; len(recs) > 0 {
		return recs[0].key
	}
	return ""
}

// envelopeEval is what one sweep found.
type envelopeEval struct {
	fits      bool       // the values fit int128; false: nothing was checked
	starts    int        // window starts examined
	violating [][2]int64 // the worst window of each violating start, by start
	// The window with the largest excess count·k1 − c − k2·Δ.
	worstA, worstB int64
	worstExcess    int128
	haveWorst      bool
	// The largest ratio count/allowed found, and its window.
	maxRatio       float64
	ratioA, ratioB int64
}

// evaluate sweeps w against bd, over the windows no longer than bd.maxLen:
// exactly for the verdict, then in floating point for the largest ratio.
func evaluateEnvelope(w *windowSet, bd envelopeBound) envelopeEval {
	w.maxLen = bd.maxLen
	ev := envelopeEval{fits: sweepFits(w, bd.k1, bd.k2, bd.c)}
	if !ev.fits || len(w.pos) == 0 {
		return ev
	}
	t0 := w.origin()
	k1, k2, c := fromBig(bd.k1), fromBig(bd.k2), fromBig(bd.c)
	sweepWindows(w,
		func(b int64) int128 { return k2.mul(b - t0).neg() },
		func(n int64) int128 { return k1.mul(n) },
		func(a, b int64, best int128) {
			ev.starts++
			excess := best.add(k2.mul(a - t0)).sub(c)
			if !ev.haveWorst || ev.worstExcess.less(excess) {
				ev.worstA, ev.worstB, ev.worstExcess, ev.haveWorst = a, b, excess, true
			}
			if excess.sign() > 0 {
				ev.violating = append(ev.violating, [2]int64{a, b})
			}
		})
	slices.Reverse(ev.violating)
	if ev.haveWorst {
		ev.maxRatio, ev.ratioA, ev.ratioB = maxRatio(w, bd, ev)
	}
	return ev
}

// maxRatio finds the window with the largest count/allowed by Dinkelbach's
// method: the window maximising count − λ·allowed has a ratio above λ
// unless λ is already the maximum, so λ only grows, and in practice settles
// in two to four sweeps. It runs in float64 and is a measurement, not a
// verdict; allowed is taken as at least one token.
func maxRatio(w *windowSet, bd envelopeBound, ev envelopeEval) (float64, int64, int64) {
	k1, k2, c := bigFloat(bd.k1), bigFloat(bd.k2), bigFloat(bd.c)
	ratio := func(a, b int64) float64 {
		allowed := max(c+k2*float64(b-a), k1)
		return float64(countIn(w, a, b)) * k1 / allowed
	}
	best, bestA, bestB := ratio(ev.worstA, ev.worstB), ev.worstA, ev.worstB
	t0 := w.origin()
	for range 50 {
		lambda := max(best, 0)
		var candA, candB int64
		candR := math.Inf(-1)
		sweepWindows(w,
			func(b int64) f64 { return f64(-lambda * k2 * float64(b-t0)) },
			func(n int64) f64 { return f64(k1 * float64(n)) },
			func(a, b int64, v f64) {
				allowed := max(c+k2*float64(b-a), k1)
				counted := float64(v) + lambda*k2*float64(b-t0)
				if r := counted / allowed; r > candR {
					candR, candA, candB = r, a, b
				}
			})
		if candR == math.Inf(-1) {
			break
		}
		r := ratio(candA, candB) // recount exactly
		if r <= best*(1+1e-12) {
			break
		}
		best, bestA, bestB = r, candA, candB
	}
	return best, bestA, bestB
}

func bigFloat(b *big.Int) float64 {
	f, _ := new(big.Float).SetInt(b).Float64()
	return f
}

// allowedTokens formats the bound's allowance for a window of length d, in
// tokens, with three decimals.
func (bd envelopeBound) allowedTokens(d int64) string {
	num := new(big.Int).Add(bd.c, new(big.Int).Mul(bd.k2, big.NewInt(d)))
	return new(big.Rat).SetFrac(num, bd.k1).FloatString(3)
}

// overTokens returns how many tokens count exceeds the bound by in a window
// of length d (negative: under it).
func (bd envelopeBound) overTokens(count, d int64) float64 {
	num := new(big.Int).Mul(big.NewInt(count), bd.k1)
	num.Sub(num, bd.c)
	num.Sub(num, new(big.Int).Mul(bd.k2, big.NewInt(d)))
	f, _ := new(big.Rat).SetFrac(num, bd.k1).Float64()
	return f
}

// envelopeReport adds one key's sweep to a Result.
func (an *analysis) envelopeReport(b *resultBuilder, prefix string, k KeySpec, kind envelopeKind, w *windowSet, ev envelopeEval, bd envelopeBound, note func(a, b int64) string) {
	verb := "admitted"
	if kind == grantsEnvelope {
		verb = "granted net of releases"
	}
	if !ev.fits {
		b.violate("key %q: %s too large to check exactly in 128 bits; shorten the run or the key's period", k.Key, kind)
		return
	}
	for _, win := range ev.violating {
		d := win[1] - win[0]
		b.violate("key %q: %d tokens %s in [%s, %s] (Δ=%v)%s, more than %s = %s",
			k.Key, countIn(w, win[0], win[1]), verb, an.at(win[0]), an.at(win[1]), time.Duration(d), note(win[0], win[1]), bd.formula, bd.allowedTokens(d))
	}
	b.r.Metrics[prefix+"windows"] += float64(ev.starts)
	if ev.haveWorst {
		over := bd.overTokens(countIn(w, ev.worstA, ev.worstB), ev.worstB-ev.worstA)
		b.r.Metrics[prefix+"over_admitted"] = max(b.r.Metrics[prefix+"over_admitted"], over, 0)
		b.r.Metrics[prefix+"max_ratio:"+k.Key] = ev.maxRatio
		b.r.Metrics[prefix+"max_ratio"] = max(b.r.Metrics[prefix+"max_ratio"], ev.maxRatio)
	}
}

// envelopeSummary describes the worst key when the check passed.
type envelopeSummary struct {
	key   string
	ratio float64
	a, b  int64
}

func (s *envelopeSummary) note(k KeySpec, ev envelopeEval) {
	if ev.haveWorst && (s.key == "" || ev.maxRatio > s.ratio) {
		*s = envelopeSummary{key: k.Key, ratio: ev.maxRatio, a: ev.ratioA, b: ev.ratioB}
	}
}

func (an *analysis) envelope(name string, kind envelopeKind) Result {
	b := newResultBuilder(name)
	b.setup(an)
	var worst envelopeSummary
	var counted, fallback, released int64
	for _, k := range an.keyList {
		w := an.windowSet(k, kind)
		for _, p := range w.pos {
			counted += p.n
		}
		for _, p := range w.neg {
			released += p.n
		}
		bd := an.bound(k, kind)
		ev := evaluateEnvelope(w, bd)
		an.envelopeReport(b, "", k, kind, w, ev, bd, func(int64, int64) string { return "" })
		worst.note(k, ev)
	}
	if kind == admissionsEnvelope {
		for _, o := range an.allows {
			if o.OK() && isFallback(o) {
				fallback += allowTokens(o)
			}
		}
		b.r.Metrics["admitted"] = float64(counted)
		b.r.Metrics["fallback"] = float64(fallback)
	} else {
		b.r.Metrics["granted"] = float64(counted)
		b.r.Metrics["released"] = float64(released)
	}
	what := "admitted"
	if kind == grantsEnvelope {
		what = "granted"
	}
	summary := fmt.Sprintf("%d keys, %d tokens %s, nothing to check", len(an.keyList), counted, what)
	if worst.key != "" {
		summary = fmt.Sprintf("%d keys, %d tokens %s, within the bound; closest: key %q at %.3f of it in [%s, %s]",
			len(an.keyList), counted, what, worst.key, worst.ratio, an.at(worst.a), an.at(worst.b))
	}
	return b.done(summary)
}

func (an *analysis) admissionEnvelope() Result { return an.envelope("admissions", admissionsEnvelope) }

func (an *analysis) grantEnvelope() Result { return an.envelope("grants", grantsEnvelope) }

// clusterOutage is a time when every node was down: from the completion of the
// kill that took the last one down to the invoke of the first restart. With
// membership faults the nodes are the members at the time: a node is one
// from its join's invoke until its leave completes.
type clusterOutage struct{ start, end int64 }

// nodes returns the cluster's node names: Options.Nodes, or those inferred.
func (an *analysis) nodes() []string {
	if len(an.opts.Nodes) > 0 {
		return an.opts.Nodes
	}
	var nodes []string
	add := func(name string) {
		if isNodeName(name) && !slices.Contains(nodes, name) {
			nodes = append(nodes, name)
		}
	}
	for _, o := range an.nemesis {
		names, _ := parseTargets(o.Invoke.Value)
		for _, n := range names {
			add(n)
		}
	}
	for i := range an.ops {
		add(an.ops[i].Process)
	}
	return nodes
}

// outages returns the full-cluster outages in time order. A kill counts
// once it completed ok; a node may be up again from its restart's invoke.
func (an *analysis) outages() []clusterOutage {
	nodes := an.nodes()
	if len(nodes) == 0 {
		return nil
	}
	type change struct {
		t     int64
		up    bool
		names []string
		join  bool // a join (up) or a leave (down): membership changes
	}
	var changes []change
	for _, o := range an.nemesis {
		names, _ := parseTargets(o.Invoke.Value)
		switch {
		case o.Op == OpKill && o.OK():
			changes = append(changes, change{t: o.Complete.Time, names: names})
		case o.Op == OpRestart:
			changes = append(changes, change{t: o.Invoke.Time, up: true, names: names})
		case o.Op == OpJoin:
			changes = append(changes, change{t: o.Invoke.Time, up: true, names: names, join: true})
		case o.Op == OpLeave && o.OK():
			changes = append(changes, change{t: o.Complete.Time, names: names, join: true})
		}
	}
	// A node is a member from the start unless its first membership change
	// is a join (a spare started later).
	member := map[string]bool{}
	for _, n := range nodes {
		member[n] = true
	}
	first := map[string]bool{}
	for _, ch := range changes {
		for _, n := range ch.names {
			if ch.join && !first[n] {
				first[n] = true
				member[n] = !ch.up
			}
		}
	}
	slices.SortStableFunc(changes, func(x, y change) int {
		if c := cmp.Compare(x.t, y.t); c != 0 {
			return c
		}
		// Up first: an outage is only counted when certain.
		switch {
		case x.up && !y.up:
			return -1
		case !x.up && y.up:
			return 1
		}
		return 0
	})
	down := make(map[string]bool)
	var out []clusterOutage
	in := false
	for _, ch := range changes {
		for _, n := range ch.names {
			down[n] = !ch.up
			if ch.join {
				member[n] = ch.up
			}
		}
		all, some := true, false
		for n, in := range member {
			if in {
				all, some = all && down[n], true
			}
		}
		all = all && some
		switch {
		case all && !in:
			in = true
			out = append(out, clusterOutage{start: ch.t})
		case !all && in:
			in = false
			out[len(out)-1].end = ch.t
		}
	}
	if in { // never restarted: no window ends after it
		out = out[:len(out)-1]
	}
	return out
}

func (an *analysis) durability() Result {
	b := newResultBuilder("durability")
	b.setup(an)
	outs := an.outages()
	b.r.Metrics["outages"] = float64(len(outs))
	if len(outs) == 0 {
		return b.done("no full-cluster outage in the history: nothing to check")
	}
	// Windows starting at a must span the first outage that starts at or
	// after a.
	minEnd := func(a int64) int64 {
		i := sort.Search(len(outs), func(i int) bool { return outs[i].start >= a })
		if i == len(outs) {
			return maxTime
		}
		return outs[i].end
	}
	spanned := func(a, e int64) string {
		i := sort.Search(len(outs), func(i int) bool { return outs[i].start >= a })
		if i == len(outs) {
			return ""
		}
		return fmt.Sprintf(" across the outage [%s, %s]", an.at(outs[i].start), an.at(outs[i].end))
	}
	for _, o := range outs {
		b.r.Details = append(b.r.Details, fmt.Sprintf("all nodes down in [%s, %s] (%v)", an.at(o.start), an.at(o.end), time.Duration(o.end-o.start)))
	}
	for _, kind := range []envelopeKind{grantsEnvelope, admissionsEnvelope} {
		for _, k := range an.keyList {
			w := an.windowSet(k, kind)
			w.minEnd = minEnd
			bd := an.bound(k, kind)
			an.envelopeReport(b, kind.String()+"_", k, kind, w, evaluateEnvelope(w, bd), bd, spanned)
		}
	}
	return b.done(fmt.Sprintf("%d full-cluster outage(s); grants and admissions within the bound across each", len(outs)))
}
