package limiter

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// refBucket is a deliberately naive token bucket in exact rational arithmetic:
// the level starts at burst, grows by (t-last)·rate/period up to burst, and a
// take of n is possible iff level >= n. It trusts nothing in bucket.go.
type refBucket struct {
	rate, period, burst int64
	level               *big.Rat
	last                int64
}

func newRefBucket(rate, period, burst, start int64) *refBucket {
	return &refBucket{rate: rate, period: period, burst: burst, level: big.NewRat(burst, 1), last: start}
}

// at moves the reference to time t, which must not go backwards.
func (r *refBucket) at(t int64) {
	if t < r.last {
		panic(fmt.Sprintf("refBucket: time went back from %d to %d", r.last, t))
	}
	refill := new(big.Rat).SetFrac(
		new(big.Int).Mul(big.NewInt(t-r.last), big.NewInt(r.rate)),
		big.NewInt(r.period))
	r.level.Add(r.level, refill)
	r.capAtBurst()
	r.last = t
}

func (r *refBucket) capAtBurst() {
	if b := big.NewRat(r.burst, 1); r.level.Cmp(b) > 0 {
		r.level.Set(b)
	}
}

// has reports whether the level is at least n.
func (r *refBucket) has(n int64) bool { return r.level.Cmp(big.NewRat(n, 1)) >= 0 }

func (r *refBucket) take(n int64) { r.level.Sub(r.level, big.NewRat(n, 1)) }

// give refunds n tokens, capped at burst.
func (r *refBucket) give(n int64) {
	r.level.Add(r.level, big.NewRat(n, 1))
	r.capAtBurst()
}

// below reports whether level < n + slack.
func (r *refBucket) below(n int64, slack *big.Rat) bool {
	lim := new(big.Rat).Add(big.NewRat(n, 1), slack)
	return r.level.Cmp(lim) < 0
}

// randBucketParams draws a valid configuration, mixing tiny and huge rates,
// periods from 1ns to 1h and bursts from 0 to 1000.
func randBucketParams(r *rand.Rand) (rate int64, period time.Duration, burst int64) {
	switch r.IntN(6) {
	case 0:
		period = 1
	case 1:
		period = time.Duration(1 + r.IntN(1000))
	case 2:
		period = time.Millisecond
	case 3:
		period = time.Second
	case 4:
		period = time.Hour
	default:
		period = time.Duration(1 + r.Int64N(int64(time.Hour)))
	}
	switch r.IntN(5) {
	case 0:
		rate = 1 + r.Int64N(10)
	case 1:
		rate = 1 + r.Int64N(1_000_000)
	case 2:
		rate = 1 + r.Int64N(math.MaxInt64)
	case 3:
		rate = math.MaxInt64
	default:
		rate = 1 + r.Int64N(int64(period)+1) // around one token per ns
	}
	switch r.IntN(4) {
	case 0:
		burst = r.Int64N(3)
	case 1:
		burst = r.Int64N(20)
	default:
		burst = r.Int64N(1001)
	}
	return rate, period, burst
}

// TestBucketMatchesReference runs the GCRA bucket and the rational reference
// side by side on random operation sequences. The reference debits only what
// the fast bucket granted and credits the same returns, so the two stay in
// lockstep, and checks:
//
//   - safety: every grant of n (plus keep) finds the exact level >= n+keep;
//   - tightness: every denial of n+keep <= burst finds the exact level below
//     n+keep+tol, where tol = (takes+returns+1)·rate/period tokens, as each op
//     may lose less than 1ns of refill to rounding;
//   - Remaining is exactly what a further take could get, and within tol of
//     the exact level;
//   - RetryAfter and ResetAfter are exact to the nanosecond.
func TestBucketMatchesReference(t *testing.T) {
	rng, seed := newRand(t)
	const sequences, opsPerSequence = 300, 200
	for seq := range sequences {
		rate, period, burst := randBucketParams(rng)
		b, err := NewTokenBucket(rate, period, burst)
		if err != nil {
			t.Fatalf("seed %d: NewTokenBucket(%d, %d, %d): %v", seed, rate, period, burst, err)
		}
		now := rng.Int64N(1 << 40)
		ref := newRefBucket(rate, int64(period), burst, now)
		var s BucketState
		var ops int64 // allowed takes of n > 0 plus returns: each may lose < 1ns
		tau := int64(b.Cost(burst))
		for i := range opsPerSequence {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d seq %d op %d (rate %d per %d, burst %d, now %d, TAT %d, ref level %s): %s",
					seed, seq, i, rate, period, burst, now, s.TAT, ref.level.FloatString(6), fmt.Sprintf(format, args...))
			}
			now += randGap(rng, tau, int64(b.Cost(1)))
			ref.at(now)
			tol := new(big.Rat).SetFrac(
				new(big.Int).Mul(big.NewInt(ops+1), big.NewInt(rate)), big.NewInt(int64(period)))

			kind := rng.IntN(10)
			if kind < 2 { // return
				n := rng.Int64N(burst + 2)
				b.Return(&s, now, n)
				if n > 0 {
					ref.give(n)
					ops++
				}
			} else {
				n := randCount(rng, burst)
				var keep int64
				if kind == 9 {
					keep = randCount(rng, burst)
				}
				before := s
				var d Decision
				switch {
				case kind < 4:
					d = b.Check(s, now, n)
					if s != before {
						fail("Check changed the state from %+v to %+v", before, s)
					}
				case kind == 9:
					d = b.TakeLeaving(&s, now, n, keep)
				default:
					d = b.Take(&s, now, n)
				}
				valid := n >= 0 && keep >= 0 && n <= burst && keep <= burst-n
				switch {
				case !valid:
					if d.Allowed || d.RetryAfter != Never {
						fail("n=%d keep=%d is impossible, got %+v", n, keep, d)
					}
				case d.Allowed:
					if !ref.has(n + keep) {
						fail("over-admission: allowed n=%d keep=%d but the exact level is %s", n, keep, ref.level.FloatString(6))
					}
					if d.RetryAfter != 0 {
						fail("allowed with RetryAfter %v", d.RetryAfter)
					}
				default:
					if !ref.below(n+keep, tol) {
						fail("under-admission beyond rounding: denied n=%d keep=%d with exact level %s, tol %s",
							n, keep, ref.level.FloatString(6), tol.FloatString(6))
					}
					checkRetryAfter(t, b, before, now, n, keep, d, fail)
				}
				if !d.Allowed && s != before {
					fail("denied take changed the state from %+v to %+v", before, s)
				}
				if kind >= 4 && d.Allowed && n > 0 {
					ref.take(n)
					ops++
				}
				// ResetAfter: the state the decision describes is full at
				// now+ResetAfter and not a nanosecond earlier.
				after := before
				if d.Allowed {
					b.TakeLeaving(&after, now, n, keep)
				}
				if !b.Full(after, now+int64(d.ResetAfter)) ||
					(d.ResetAfter > 0 && b.Full(after, now+int64(d.ResetAfter)-1)) {
					fail("ResetAfter %v wrong for TAT %d", d.ResetAfter, after.TAT)
				}
				if got := b.Available(after, now); d.Remaining != got {
					fail("Remaining %d, but Available afterwards is %d", d.Remaining, got)
				}
			}
			// Remaining is what a take could get next, never more than the exact
			// level, and less than it only by rounding.
			avail := b.Available(s, now)
			if avail < 0 || avail > burst {
				fail("Available %d outside [0, %d]", avail, burst)
			}
			if !b.Check(s, now, avail).Allowed {
				fail("Check of Available=%d tokens denied", avail)
			}
			if avail < burst && b.Check(s, now, avail+1).Allowed {
				fail("Check of Available+1=%d tokens allowed", avail+1)
			}
			if !ref.has(avail) {
				fail("Available %d exceeds the exact level", avail)
			}
			if !ref.below(avail+1, tol) {
				fail("Available %d too far below the exact level (tol %s)", avail, tol.FloatString(6))
			}
			if s.TAT > now+tau {
				fail("TAT more than tau=%d ahead of now", tau)
			}
		}
	}
}

// checkRetryAfter checks that a denied, satisfiable request would still be
// denied 1ns before now+RetryAfter and allowed at now+RetryAfter.
func checkRetryAfter(t *testing.T, b TokenBucket, s BucketState, now, n, keep int64, d Decision, fail func(string, ...any)) {
	t.Helper()
	if d.RetryAfter <= 0 || d.RetryAfter == Never {
		fail("denied satisfiable n=%d keep=%d with RetryAfter %v", n, keep, d.RetryAfter)
		return
	}
	at := now + int64(d.RetryAfter)
	early, ok := s, s
	if b.TakeLeaving(&early, at-1, n, keep).Allowed {
		fail("RetryAfter %v too late: allowed 1ns earlier", d.RetryAfter)
	}
	if !b.TakeLeaving(&ok, at, n, keep).Allowed {
		fail("RetryAfter %v too early: denied at now+RetryAfter", d.RetryAfter)
	}
}

// randGap returns a time step: often 0, often around the cost of a token or the
// refill time tau, sometimes far beyond a full refill.
func randGap(r *rand.Rand, tau, cost1 int64) int64 {
	const maxGap = 1 << 50
	switch r.IntN(8) {
	case 0, 1:
		return 0
	case 2:
		return 1
	case 3:
		return r.Int64N(min(cost1, maxGap)*2 + 1)
	case 4, 5:
		return r.Int64N(min(tau, maxGap) + 2)
	case 6:
		return min(tau, maxGap) + r.Int64N(3)
	default:
		return min(tau, maxGap)*2 + r.Int64N(maxGap)
	}
}

// randCount returns a token count, mostly in [0, limit], sometimes just above
// it or negative.
func randCount(r *rand.Rand, limit int64) int64 {
	switch r.IntN(12) {
	case 0:
		return limit + 1 + r.Int64N(3)
	case 1:
		return -1 - r.Int64N(3)
	case 2:
		return 0
	case 3:
		return limit
	case 4, 5, 6:
		return r.Int64N(min(limit, 3) + 1)
	default:
		return r.Int64N(limit + 1)
	}
}

// refGrant is one grant the reference window remembers: n tokens that may be
// spent at any instant of [from, until].
type refGrant struct {
	from, until, n int64
}

// refWindow is a deliberately naive sliding window: it keeps every grant and
// checks real windows [a, a+window) directly.
type refWindow struct {
	window, limit int64
	grants        []*refGrant
}

// load returns the tokens of grants whose span intersects [a, a+window), plus
// extra if the candidate [from, until] intersects it.
func (r *refWindow) load(a int64, extra *refGrant) int64 {
	var sum int64
	in := func(g *refGrant) bool { return g.from <= a+r.window-1 && g.until >= a }
	for _, g := range r.grants {
		if in(g) {
			sum += g.n
		}
	}
	if extra != nil && in(extra) {
		sum += extra.n
	}
	return sum
}

// worst returns the largest load of any real window intersecting c, counting c.
// The load as a function of a only rises where some grant's from enters the
// window (a = from-window+1), so its maximum over the windows that intersect c,
// a in [c.from-window+1, c.until], is at the left end or at such a point.
func (r *refWindow) worst(c *refGrant) (most, at int64) {
	lo, hi := c.from-r.window+1, c.until
	most, at = r.load(lo, c), lo
	for _, g := range r.grants {
		if a := g.from - r.window + 1; a > lo && a <= hi {
			if l := r.load(a, c); l > most {
				most, at = l, a
			}
		}
	}
	return most, at
}

// prune forgets grants no window that intersects a grant from now on can see.
func (r *refWindow) prune(now int64) {
	kept := r.grants[:0]
	for _, g := range r.grants {
		if g.until >= now-r.window {
			kept = append(kept, g)
		}
	}
	clear(r.grants[len(kept):])
	r.grants = kept
}

// randWindowParams draws a small window (so the reference stays cheap) with
// 1 to 64 slots and a limit from 0 to 1000.
func randWindowParams(r *rand.Rand) (limit int64, window time.Duration, slots int) {
	window = time.Duration(1 + r.Int64N(200))
	switch r.IntN(4) {
	case 0:
		slots = 1 + r.IntN(MaxSlots)
	case 1:
		slots = 1
	default:
		slots = 1 + r.IntN(8)
	}
	switch r.IntN(4) {
	case 0:
		limit = r.Int64N(3)
	case 1:
		limit = 1 + r.Int64N(1000)
	default:
		limit = 1 + r.Int64N(20)
	}
	return limit, window, slots
}

// lease is a grant the window test still holds and may return: one
// reference grant, or one per piece of a pieced grant.
type lease struct {
	ref     *refGrant
	pieces  []*refGrant
	span    Span
	granted int64
}

// TestWindowMatchesReference runs the sliding window on random sequences of
// instant takes, span takes, checks and returns, and asserts:
//
//   - safety: no grant (or allowed check) ever makes a real window [a, a+W)
//     intersect grants worth more than Limit, counting after a return only the
//     tokens used, over the span up to the return;
//   - Remaining for instant requests is exactly what a further take could get;
//   - RetryAfter of a denied instant request is exact to the nanosecond.
func TestWindowMatchesReference(t *testing.T) {
	rng, seed := newRand(t)
	const sequences, opsPerSequence = 400, 150
	for seq := range sequences {
		limit, window, slots := randWindowParams(rng)
		w, err := NewSlidingWindow(limit, window, slots)
		if err != nil {
			t.Fatalf("seed %d: NewSlidingWindow(%d, %d, %d): %v", seed, limit, window, slots, err)
		}
		W := int64(window)
		ref := &refWindow{window: W, limit: limit}
		var s WindowState
		var leases []lease
		now := int64(0)
		if rng.IntN(2) == 0 {
			now = rng.Int64N(1 << 40)
		}
		for i := range opsPerSequence {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d seq %d op %d (limit %d, window %d, slots %d->%d, now %d): %s",
					seed, seq, i, limit, W, slots, w.Slots(), now, fmt.Sprintf(format, args...))
			}
			switch r := rng.IntN(10); {
			case r < 3:
				now += 0
			case r < 8:
				now += rng.Int64N(W/int64(w.Slots()) + 2)
			default:
				now += rng.Int64N(3*W + 1)
			}
			ref.prune(now)

			switch op := rng.IntN(12); {
			case op < 2 && len(leases) > 0: // return
				j := rng.IntN(len(leases))
				l := leases[j]
				leases = append(leases[:j], leases[j+1:]...)
				if l.span.Pieced {
					// The holder spends a piece only within its slot:
					// what it never spent is all of the pieces not yet
					// begun and part of the one it is in.
					unused := int64(0)
					for k := len(l.pieces) - 1; k >= 0; k-- {
						p := l.pieces[k]
						if p.from > now {
							unused += p.n
							p.n = 0
							continue
						}
						u := rng.Int64N(p.n + 1)
						p.n -= u
						unused += u
						break
					}
					w.Return(&s, now, l.span, l.granted, unused)
					break
				}
				unused := rng.Int64N(l.granted + 1)
				w.Return(&s, now, l.span, l.granted, unused)
				l.ref.n -= unused
				l.ref.until = min(l.ref.until, max(now, l.ref.from))
			case op >= 10: // a pieced grant
				g := int64(w.Width())
				kNow := w.Slot(&s, now)
				first := kNow + rng.Int64N(3)
				last := first + rng.Int64N(int64(w.Slots())+1)
				lo, hi := max(first, kNow), min(last, kNow+int64(w.Slots())+1)
				if hi < lo {
					if w.PiecesFit(&s, now, first, last, 1) || !w.PiecesFit(&s, now, first, last, 0) {
						fail("PiecesFit of an empty range")
					}
					break
				}
				m := hi - lo + 1
				// The most that fits, by a search PiecesFit must make
				// monotone: fewer tokens never fit worse.
				most := int64(0)
				for most < limit*m && w.PiecesFit(&s, now, first, last, most+1) {
					most++
				}
				if most < limit*m && w.PiecesFit(&s, now, first, last, most+2) {
					fail("PiecesFit not monotone at %d", most+1)
				}
				if most < limit*m {
					// One more overflows some slot window.
					c := cloneWindow(s)
					w.TakePieces(&c, now, first, last, most+1)
					if w.worst(&c, lo, hi) <= limit {
						fail("PiecesFit says %d do not fit in slots %d..%d, but they do", most+1, lo, hi)
					}
				}
				total := rng.Int64N(most + 1)
				sp := w.TakePieces(&s, now, first, last, total)
				if total == 0 {
					if sp != (Span{}) {
						fail("TakePieces of 0 returned %+v", sp)
					}
					break
				}
				if sp != (Span{First: lo, Last: hi, Pieced: true}) {
					fail("TakePieces returned %+v, want slots %d..%d pieced", sp, lo, hi)
				}
				l := lease{span: sp, granted: total}
				for k := lo; k <= hi; k++ {
					p := &refGrant{from: max(k*g, now), until: (k+1)*g - 1, n: Piece(total, m, k-lo)}
					ref.grants = append(ref.grants, p)
					l.pieces = append(l.pieces, p)
				}
				for _, p := range l.pieces {
					if most, a := ref.worst(&refGrant{from: p.from, until: p.until}); most > limit {
						fail("over-admission: %d tokens in slots %d..%d put %d tokens in real window [%d, %d)", total, lo, hi, most, a, a+W)
					}
				}
				leases = append(leases, l)
			default:
				n := randCount(rng, limit)
				until := now
				if op >= 6 {
					until = now + rng.Int64N(W+W/2+2)
				}
				cand := &refGrant{from: now, until: min(until, now+W), n: n}
				before := cloneWindow(s)
				var d Decision
				var sp Span
				if op == 2 {
					d = w.CheckSpan(&s, now, until, n)
					if !sameWindow(s, before) {
						fail("CheckSpan changed the state")
					}
				} else {
					d, sp = w.TakeSpan(&s, now, until, n)
				}
				switch {
				case n < 0 || n > limit:
					if d.Allowed || d.RetryAfter != Never {
						fail("n=%d is impossible, got %+v", n, d)
					}
				case d.Allowed:
					if most, a := ref.worst(cand); most > limit {
						fail("over-admission: grant %+v puts %d tokens in real window [%d, %d)", *cand, most, a, a+W)
					}
					if d.RetryAfter != 0 {
						fail("allowed with RetryAfter %v", d.RetryAfter)
					}
				default:
					if d.RetryAfter <= 0 || d.RetryAfter == Never {
						fail("denied satisfiable n=%d with RetryAfter %v", n, d.RetryAfter)
					}
					if !sameWindow(s, before) {
						fail("denied take changed the state")
					}
					if until == now {
						at := now + int64(d.RetryAfter)
						if w.Check(&s, at-1, n).Allowed {
							fail("RetryAfter %v too late: allowed 1ns earlier", d.RetryAfter)
						}
						if !w.Check(&s, at, n).Allowed {
							fail("RetryAfter %v too early: denied at now+RetryAfter", d.RetryAfter)
						}
					}
				}
				if d.Remaining < 0 || d.Remaining > limit {
					fail("Remaining %d outside [0, %d]", d.Remaining, limit)
				}
				if op != 2 && d.Allowed && n > 0 {
					ref.grants = append(ref.grants, cand)
					leases = append(leases, lease{ref: cand, span: sp, granted: n})
				}
				if op != 2 && d.Allowed && until == now {
					// A further instant take at now gets exactly Remaining.
					if d.Remaining < limit && w.Check(&s, now, d.Remaining+1).Allowed {
						fail("Remaining %d, but %d more are allowed", d.Remaining, d.Remaining+1)
					}
					if !w.Check(&s, now, d.Remaining).Allowed {
						fail("Remaining %d, but that many are denied", d.Remaining)
					}
				}
			}
			if got, want := w.Empty(&s, now), emptyAhead(ref, now); got && !want {
				fail("Empty, but a grant still counts in a window at or after now")
			}
		}
	}
}

// emptyAhead reports whether no grant intersects a real window that contains
// now or a later time — a necessary condition for the state to be forgettable.
func emptyAhead(r *refWindow, now int64) bool {
	for _, g := range r.grants {
		if g.n > 0 && g.until >= now-r.window+1 {
			return false
		}
	}
	return true
}

func cloneWindow(s WindowState) WindowState {
	s.Counts = append([]int64(nil), s.Counts...)
	return s
}

func sameWindow(a, b WindowState) bool {
	if a.Base != b.Base || len(a.Counts) != len(b.Counts) {
		return false
	}
	for i := range a.Counts {
		if a.Counts[i] != b.Counts[i] {
			return false
		}
	}
	return true
}

// TestWindowSteadyClientAdmission measures under-admission: one client asks for
// one token at every nanosecond, with instant spans, for many windows. Slot
// windows are Slots+1 slots of g = ⌈Window/Slots⌉, so the client must get at
// least Limit·Window/((Slots+1)·g) - 1 tokens per Window on average, which is
// the documented Limit·Slots/(Slots+1) - 1 when Slots divides Window. It cannot
// get much more either (at most Limit per slot window), and every real window
// must stay within Limit.
func TestWindowSteadyClientAdmission(t *testing.T) {
	tests := []struct {
		name   string
		limit  int64
		window int64
		slots  int
	}{
		{name: "one slot", limit: 10, window: 100, slots: 1},
		{name: "four slots", limit: 10, window: 100, slots: 4},
		{name: "ten slots", limit: 37, window: 1000, slots: 10},
		{name: "limit above slot width", limit: 50, window: 100, slots: 10},
		{name: "limit equals window", limit: 100, window: 100, slots: 5},
		{name: "64 slots", limit: 20, window: 640, slots: 64},
		{name: "1ns window", limit: 1, window: 1, slots: 1},
		// g rounded up: 101ns in 10 slots of 11ns; 9ns in 8 slots of 2ns.
		{name: "101ns in 10 slots", limit: 30, window: 101, slots: 10},
		{name: "9ns in 8 slots", limit: 8, window: 9, slots: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewSlidingWindow(tt.limit, time.Duration(tt.window), tt.slots)
			if err != nil {
				t.Fatal(err)
			}
			const windows = 200
			start := 1000 * tt.window // well past the first slots of log time
			run := windows * tt.window
			var s WindowState
			admitted := make([]int64, 0, run)
			for now := start; now < start+run; now++ {
				if w.Take(&s, now, 1).Allowed {
					admitted = append(admitted, now)
				}
			}
			// Safety along the way: any W consecutive nanoseconds hold at most
			// Limit grants.
			for i := range admitted {
				if j := i + int(tt.limit); j < len(admitted) && admitted[j]-admitted[i] < tt.window {
					t.Fatalf("%d grants in [%d, %d), limit %d", tt.limit+1, admitted[i], admitted[j]+1, tt.limit)
				}
			}
			S := min(int64(tt.slots), tt.window)
			g := (tt.window + S - 1) / S
			perWindow := float64(len(admitted)) * float64(tt.window) / float64(run)
			share := float64(tt.limit) * float64(tt.window) / float64((S+1)*g)
			if perWindow < share-1 {
				t.Errorf("admitted %.2f per window, want at least %d·%d/((%d+1)·%d)-1 = %.2f", perWindow, tt.limit, tt.window, S, g, share-1)
			}
			// A fresh state may grant one extra Limit at the start of the run.
			if upper := share + 1 + float64(tt.limit)/windows; perWindow > upper {
				t.Errorf("admitted %.2f per window, more than the slot-window model allows (%.2f)", perWindow, upper)
			}
			if tt.window%S == 0 {
				if doc := float64(tt.limit*S)/float64(S+1) - 1; perWindow < doc {
					t.Errorf("admitted %.2f per window, below the documented Limit·Slots/(Slots+1)-1 = %.2f", perWindow, doc)
				}
			}
		})
	}
}

// TestWindowFirstFitMatchesSlidingSearch: the one-pass RetryAfter search
// returns the same shift as sliding the grant one slot at a time and asking
// worst() each time, the quadratic search it replaced, on random states and
// spans.
func TestWindowFirstFitMatchesSlidingSearch(t *testing.T) {
	rng, seed := newRand(t)
	for c := range 3000 {
		limit, window, slots := randWindowParams(rng)
		w := mustWindow(t, limit, window, slots)
		W := int64(window)
		var s WindowState
		now := int64(1<<30) + rng.Int64N(1<<20)
		for range rng.IntN(40) {
			now += rng.Int64N(W/int64(w.Slots()) + 2)
			until := now
			if rng.IntN(2) == 0 {
				until += rng.Int64N(W + 2)
			}
			n := rng.Int64N(limit + 1)
			d, sp := w.TakeSpan(&s, now, until, n)
			if d.Allowed && n > 0 && rng.IntN(5) == 0 {
				now += rng.Int64N(W)
				w.Return(&s, now, sp, n, rng.Int64N(n+1))
			}
		}
		k0, k1 := w.span(&s, now+rng.Int64N(W), now+rng.Int64N(2*W))
		n := rng.Int64N(limit + 1)
		want := w.ring + 1
		for shift := int64(1); shift <= w.ring; shift++ {
			if n <= w.limit-w.worst(&s, k0+shift, k1+shift) {
				want = shift
				break
			}
		}
		if got := w.firstFit(&s, k0, k1-k0, w.limit-n); got != want {
			t.Fatalf("seed %d case %d (limit %d, window %d, slots %d, span [%d, %d], n %d): firstFit = %d, sliding search = %d",
				seed, c, limit, W, w.Slots(), k0, k1, n, got, want)
		}
	}
}

// TestPiecesReferenceCatchesOverbooking shows that the reference check of
// TestWindowMatchesReference can fail on pieces: clients that renew every
// slot with the most PiecesFit allows stay within the limit in every real
// window, each piece spent anywhere in its slot, while a known-bad window
// that grants the same pieces without asking PiecesFit, or counts a piece in
// the slot before the one it is spent in, puts more than the limit in one.
func TestPiecesReferenceCatchesOverbooking(t *testing.T) {
	const limit = 100
	for _, bad := range []string{"", "no PiecesFit", "counted a slot early"} {
		name := cmp.Or(bad, "as it is")
		t.Run(name, func(t *testing.T) {
			w := mustWindow(t, limit, time.Second, 10)
			g, W := int64(w.Width()), int64(time.Second)
			ref := &refWindow{window: W, limit: limit}
			var s WindowState
			now := 10 * W
			worst := int64(0)
			for range 40 {
				k := w.Slot(&s, now)
				first, last := k, k+int64(w.Slots())
				most := int64(0)
				for w.PiecesFit(&s, now, first, last, most+1) {
					most++
				}
				total := most
				if bad == "no PiecesFit" {
					total = most + limit/4
				}
				if total > 0 {
					sp := w.TakePieces(&s, now, first, last, total)
					m := sp.Last - sp.First + 1
					for j := sp.First; j <= sp.Last; j++ {
						n := Piece(total, m, j-sp.First)
						from, until := max(j*g, now), (j+1)*g-1
						if bad == "counted a slot early" && j > sp.First {
							// Spent one slot later than counted.
							from, until = from+g, until+g
						}
						ref.grants = append(ref.grants, &refGrant{from: from, until: until, n: n})
					}
				}
				for _, p := range ref.grants {
					most, _ := ref.worst(&refGrant{from: p.from, until: p.until})
					worst = max(worst, most)
				}
				now += g + g/3
				ref.prune(now)
			}
			t.Logf("%s: most in a real window %d of %d", name, worst, limit)
			if bad == "" && worst > limit {
				t.Errorf("pieces that fit put %d in a real window; the limit is %d", worst, limit)
			}
			if bad != "" && worst <= limit {
				t.Errorf("the known-bad window (%s) went uncaught: at most %d in a real window", bad, worst)
			}
		})
	}
}
