package fsm

import (
	"testing"
	"time"
)

// TestCentralWindowSpans measures what counting a window's central
// decisions over a span costs a saturated window (DESIGN.md, "Sliding
// windows": a central decision answered late). Clients decide every
// request centrally, 4 times the limit in all, against this Machine in log
// time; each grant is counted over [T, T+span] (TakeSpan) instead of the
// instant T. It logs the share of the limit admitted per window (median,
// mean, p10) for each span, the first being 0 (today's instant grant), and
// checks only the bound.
func TestCentralWindowSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("a table of minutes of log time")
	}
	shapes := []struct {
		name string
		sim  windowSim
	}{
		{"10/1s, 4 clients", windowSim{limit: 10, window: time.Second, slots: 10, maxLease: 2 * time.Second, clients: 4,
			demand: 4, duration: 120 * time.Second}},
		{"100/1s, 4 clients", windowSim{limit: 100, window: time.Second, slots: 10, maxLease: 2 * time.Second, clients: 4,
			demand: 4, duration: 60 * time.Second}},
		{"60/min, 4 clients", windowSim{limit: 60, window: time.Minute, slots: 10, maxLease: 2 * time.Second, clients: 4,
			demand: 4, duration: 10 * time.Minute}},
	}
	for _, sh := range shapes {
		for _, span := range []time.Duration{0, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
			sim := sh.sim
			sim.central, sim.centralSpan = true, span
			sim.buckets = WindowBuckets(sim.window, sim.slots)
			o := sim.run(t)
			t.Logf("%-18s span %-6v per window mean %.3f median %.3f p10 %.3f; most %d/%d; %.0f acquires per 1000 admitted",
				sh.name, span, o.mean, o.share, o.p10, o.worst, sim.limit, o.writes)
			if o.worst > sim.limit {
				t.Errorf("%s, span %v: %d admitted in one window, limit %d", sh.name, span, o.worst, sim.limit)
			}
		}
	}
}

// TestCentralWindowSpanBesideLessees measures a client deciding centrally,
// asking a fraction of an even split or all of it, on a window that seven
// greedy clients lease in pieces, its grants counted over a span (Span) or
// sent as short leases (TTL = span: the rejected way to ask for a span).
// As a lease, a granted central decision makes its client a lessee for the
// span, and a refused one does not make it a lessee for the lease's life
// (claim: only a central acquire does): it starves.
func TestCentralWindowSpanBesideLessees(t *testing.T) {
	if testing.Short() {
		t.Skip("minutes of log time")
	}
	for _, modest := range []float64{0.4, 1} {
		for _, v := range []struct {
			span    time.Duration
			asLease bool
		}{{0, false}, {25 * time.Millisecond, false}, {50 * time.Millisecond, false}, {25 * time.Millisecond, true}, {50 * time.Millisecond, true}} {
			span := v.span
			sim := windowShapes[1].sim
			sim.centralAsLease = v.asLease
			sim.paced, sim.buckets = true, WindowBuckets(sim.window, sim.slots)
			sim.rates = []float64{modest, 4, 4, 4, 4, 4, 4, 4}
			sim.centrals = []bool{true}
			sim.centralSpan = span
			o := sim.run(t)
			fair := float64(sim.limit) / sim.window.Seconds() / float64(sim.clients)
			t.Logf("central client asking %.0f/s, span %-5v as lease %-5v: admitted %.1f/s; greedy %.0f/s; per window mean %.3f p10 %.3f; most %d/%d",
				modest*fair, span, v.asLease, o.clientsR[0], o.clientsR[1:], o.mean, o.p10, o.worst, sim.limit)
			if o.worst > sim.limit {
				t.Errorf("span %v: %d admitted in one window, limit %d", span, o.worst, sim.limit)
			}
		}
	}
}

// A central acquire with a Span is counted by a window over [T, T+Span],
// in every slot window that span overlaps, as a lease of that life would
// be, and makes no lease: a grant spanning into the next bucket keeps the
// window full for a bucket longer than an instant grant. Its result's TTL
// is the span counted (capped by MaxLease), also when the dedup table
// answers a retry; a token bucket ignores the span; and a denied one still
// makes its client a lessee (claim), as a central acquire does.
func TestCentralAcquireCountedOverItsSpan(t *testing.T) {
	const g = 50 * time.Millisecond
	lim := Limit{Algorithm: SlidingWindow, Limit: 10, Period: time.Second, Buckets: 20, MaxLease: 40 * time.Millisecond}
	for _, tc := range []struct {
		span      time.Duration
		wantTTL   time.Duration
		laterDeny bool // a grant one bucket past the window of the first is denied
	}{
		{span: 0, wantTTL: 0},
		{span: 25 * time.Millisecond, wantTTL: 25 * time.Millisecond, laterDeny: true},
		{span: time.Second, wantTTL: 40 * time.Millisecond, laterDeny: true}, // capped at MaxLease
	} {
		r := newRig(t)
		r.setLimit("w", lim)
		r.setLimit("tb", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10})
		// 10ms before a bucket's end: a span of 25ms reaches the next.
		r.advance(g - time.Duration(r.now%int64(g)) - 10*time.Millisecond)
		a := &Acquire{ClientID: "a", Seq: 1, Items: []Item{{Key: "w", Count: 10}}, Span: tc.span}
		res := r.ok(a)
		if res.LeaseID != 0 || res.TTL != tc.wantTTL {
			t.Errorf("span %v: lease %d, TTL %v; want no lease, TTL %v", tc.span, res.LeaseID, res.TTL, tc.wantTTL)
		}
		if again := r.ok(a); again.TTL != tc.wantTTL || again.Items[0].Granted != 10 {
			t.Errorf("span %v: the retry's answer %+v, want the first (TTL %v)", tc.span, again, tc.wantTTL)
		}
		if tb := r.ok(&Acquire{ClientID: "a", Seq: 2, Items: []Item{{Key: "tb", Count: 1}}, Span: tc.span}); tb.TTL != 0 {
			t.Errorf("span %v on a token bucket: TTL %v, want 0", tc.span, tb.TTL)
		}
		if n := r.m.entries[r.m.keys.findString(r.m.entries, "w")].lessees(); n != 0 {
			t.Errorf("span %v: %d lessees after a grant, want 0", tc.span, n)
		}
		// The next bucket, a window after the first grant's bucket began:
		// an instant grant has slid out; one counted over its span has not.
		r.advance(g + 10*time.Millisecond + time.Second - g + time.Millisecond)
		res = r.apply(&Acquire{ClientID: "b", Seq: 1, Items: []Item{{Key: "w", Count: 1}}})
		if denied := res.Status == StatusDenied; denied != tc.laterDeny {
			t.Errorf("span %v: a grant a window after the first's bucket: %v, want denied %v", tc.span, res.Status, tc.laterDeny)
		}
		if tc.laterDeny {
			if n := r.m.entries[r.m.keys.findString(r.m.entries, "w")].lessees(); n != 1 {
				t.Errorf("span %v: %d lessees after a central denial, want 1 (claim)", tc.span, n)
			}
		}
	}
}

// A central acquire with a Span and SpanBuckets is answered by a token
// bucket with its MaxLease (Λ) as the result's TTL, the longest after T
// that the bound lets the grant be spent (Machine.acquire), whatever longer
// span was asked; a strict bucket too, its reserve ⌈r·Λ⌉ covering that;
// but not a strict bucket with no leases (Λ = 0: TTL 0, as before). With a
// window among the items the TTL is the least of them, and the window
// counts the grant over that. Without SpanBuckets a bucket ignores the span,
// as before the field. The span takes nothing more from the bucket, and the
// dedup table answers a retry with the same TTL.
func TestCentralTokenBucketAnswersItsMaxLease(t *testing.T) {
	const maxLease = 300 * time.Millisecond
	tb := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxLease: maxLease}
	strict := tb
	strict.Strict = true // reserve ⌈10·0.3⌉ = 3 of 10
	noLease := strict
	noLease.MaxLease = 2 * time.Second // reserve 20 ≥ 10: no leases
	win := Limit{Algorithm: SlidingWindow, Limit: 10, Period: time.Second, Buckets: 20, MaxLease: time.Second}
	for _, tc := range []struct {
		name        string
		keys        []string
		span        time.Duration
		spanBuckets bool
		wantTTL     time.Duration
	}{
		{name: "bucket", keys: []string{"tb"}, span: time.Minute, spanBuckets: true, wantTTL: maxLease},
		{name: "bucket, short span", keys: []string{"tb"}, span: 100 * time.Millisecond, spanBuckets: true, wantTTL: 100 * time.Millisecond},
		{name: "bucket without SpanBuckets", keys: []string{"tb"}, span: time.Minute, wantTTL: 0},
		{name: "strict bucket", keys: []string{"strict"}, span: time.Minute, spanBuckets: true, wantTTL: maxLease},
		{name: "strict bucket with no leases", keys: []string{"nolease"}, span: time.Minute, spanBuckets: true, wantTTL: 0},
		{name: "window and bucket", keys: []string{"w", "tb"}, span: time.Minute, spanBuckets: true, wantTTL: maxLease},
		{name: "window and bucket with no leases", keys: []string{"w", "nolease"}, span: time.Minute, spanBuckets: true, wantTTL: time.Second},
		// A Budget's reservation on a key with no leases and a leasing
		// one (client/DESIGN.md, "A Budget's reservation answered late").
		{name: "bucket with no leases and bucket", keys: []string{"nolease", "tb"}, span: time.Minute, spanBuckets: true, wantTTL: maxLease},
	} {
		r := newRig(t)
		r.setLimit("tb", tb)
		r.setLimit("strict", strict)
		r.setLimit("nolease", noLease)
		r.setLimit("w", win)
		var items []Item
		for _, k := range tc.keys {
			items = append(items, Item{Key: k, Count: 2, Want: 5})
		}
		a := &Acquire{ClientID: "a", Seq: 1, Items: items, Span: tc.span, SpanBuckets: tc.spanBuckets}
		res := r.ok(a)
		if res.LeaseID != 0 || res.TTL != tc.wantTTL {
			t.Errorf("%s: lease %d, TTL %v; want no lease, TTL %v", tc.name, res.LeaseID, res.TTL, tc.wantTTL)
		}
		if again := r.ok(a); again.TTL != tc.wantTTL {
			t.Errorf("%s: the retry's TTL %v, want the first's %v", tc.name, again.TTL, tc.wantTTL)
		}
		// The same acquire with no span, on a rig of its own, takes as
		// much: a bucket does not count the span.
		r0 := newRig(t)
		r0.setLimit("tb", tb)
		r0.setLimit("strict", strict)
		r0.setLimit("nolease", noLease)
		r0.setLimit("w", win)
		res0 := r0.ok(&Acquire{ClientID: "a", Seq: 1, Items: items})
		for i, k := range tc.keys {
			if k != "w" && res.Items[i] != res0.Items[i] {
				t.Errorf("%s: key %q answered %+v with the span, %+v without", tc.name, k, res.Items[i], res0.Items[i])
			}
		}
	}
}

// A lease asked of a key that grants no leases and a leasing one is
// answered as a central grant, no lease and TTL 0, with nothing said of
// how late it may be spent: a Budget that gets such an answer asks again
// centrally with a span (client/DESIGN.md, "A Budget's reservation
// answered late"), which TestCentralTokenBucketAnswersItsMaxLease answers.
func TestLeaseBesideAKeyWithNoLeasesIsCentral(t *testing.T) {
	r := newRig(t)
	r.setLimit("tb", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxLease: 300 * time.Millisecond})
	r.setLimit("nolease", Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxLease: 2 * time.Second, Strict: true})
	res := r.ok(&Acquire{ClientID: "a", Seq: 1, TTL: time.Minute,
		Items: []Item{{Key: "nolease", Count: 2, Want: 2}, {Key: "tb", Count: 2, Want: 2}}})
	if res.LeaseID != 0 || res.TTL != 0 {
		t.Errorf("lease %d, TTL %v; want no lease, TTL 0", res.LeaseID, res.TTL)
	}
}
