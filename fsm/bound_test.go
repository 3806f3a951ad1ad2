package fsm_test

import (
	"flag"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/limiter"
)

// The over-admission bound (DESIGN.md invariant 7), checked end to end: many
// simulated lessees share one key through a real Machine, every token they
// spend is recorded with the log time at which it was spent, and an independent
// checker, written in plain integer arithmetic and knowing nothing of the
// limiter or fsm code, verifies the stated envelope over every interval.

var boundSeed = flag.Uint64("bound.seed", 0, "base seed of TestOverAdmissionBound (0: random)")

// boundNeed is the most tokens a simulated client needs at one action: each
// needs 1 to boundNeed.
const boundNeed = 3

// boundAdmission is tokens spent at one instant of log time.
type boundAdmission struct {
	at, tokens int64
}

// boundMul returns a·b, failing loudly rather than overflowing.
func boundMul(a, b int64) int64 {
	if a < 0 || b < 0 {
		panic(fmt.Sprintf("boundMul(%d, %d): negative", a, b))
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > 1<<62 {
		panic(fmt.Sprintf("boundMul(%d, %d) overflows", a, b))
	}
	return int64(lo)
}

// boundGroup sorts the admissions and merges those at the same instant: the
// distinct times ascending, and prefix sums of tokens (pre[i] is the total
// before times[i]).
func boundGroup(adm []boundAdmission) (times, pre []int64) {
	adm = slices.Clone(adm)
	slices.SortFunc(adm, func(a, b boundAdmission) int { return int(min(max(a.at-b.at, -1), 1)) })
	pre = []int64{0}
	for _, a := range adm {
		if a.tokens < 0 {
			panic("negative admission")
		}
		if len(times) == 0 || times[len(times)-1] != a.at {
			times = append(times, a.at)
			pre = append(pre, pre[len(pre)-1])
		}
		pre[len(pre)-1] += a.tokens
	}
	return times, pre
}

// checkBucketBound verifies that in every interval [a, a+Δ] whose ends are
// admission times (the worst intervals always are), the tokens admitted obey
//
//	admitted ≤ burst + rate·(Δ+lambda)/period
//
// compared exactly as admitted·period ≤ burst·period + rate·(Δ+lambda). lambda
// is the key's longest lease, or 0 for the strict bound. With debt, burst is
// B + D: the bucket's burst and its MaxDebt, and admitted counts tokens
// charged. It returns the first
// violation, and the largest admitted/bound ratio seen (how tight the bound was).
func checkBucketBound(adm []boundAdmission, burst, rate, period, lambda int64) (tightest float64, err error) {
	times, pre := boundGroup(adm)
	if len(times) == 0 {
		return 0, nil
	}
	// No product below can overflow: check the largest ones once.
	boundMul(pre[len(pre)-1], period)
	boundMul(burst, period)
	boundMul(rate, times[len(times)-1]-times[0]+lambda)
	for i := range times {
		for j := i; j < len(times); j++ {
			admitted := pre[j+1] - pre[i]
			delta := times[j] - times[i]
			lhs := admitted * period
			rhs := burst*period + rate*(delta+lambda)
			if lhs > rhs && err == nil {
				err = fmt.Errorf("%d tokens admitted in [%d, %d] (Δ = %v); the bound B (+ D) + r·(Δ+Λ) = %d + %d·(%v+%v)/%v = %.2f",
					admitted, times[i], times[j], time.Duration(delta), burst, rate, time.Duration(delta),
					time.Duration(lambda), time.Duration(period), float64(rhs)/float64(period))
			}
			if rhs > 0 {
				tightest = max(tightest, float64(lhs)/float64(rhs))
			}
		}
	}
	return tightest, err
}

// checkWindowBound verifies that every window [a, a+window) starting at an
// admission time (the worst windows always do) admits at most limit tokens.
func checkWindowBound(adm []boundAdmission, limit, window int64) (tightest float64, err error) {
	times, pre := boundGroup(adm)
	j := 0
	for i := range times {
		for j < len(times) && times[j] < times[i]+window {
			j++
		}
		admitted := pre[j] - pre[i]
		if admitted > limit && err == nil {
			err = fmt.Errorf("%d tokens admitted in [%d, %d+%v); the limit is %d per %v",
				admitted, times[i], times[i], time.Duration(window), limit, time.Duration(window))
		}
		tightest = max(tightest, float64(admitted)/float64(limit))
	}
	return tightest, err
}

// boundSim is the configuration of one simulation.
type boundSim struct {
	name  string
	limit fsm.Limit // normalized by the test before use
	// steps is how many client actions to simulate; each one happens after a
	// random gap of log time averaging gap.
	steps int
	gap   time.Duration
	// spells is the expected number of idle spells in a run, each lasting
	// up to the time the key takes to recover fully.
	spells float64
	// buggy clients abandon half their leases, keep the tokens of leases
	// they abandon or that expire, and spend them, after expiry, whenever
	// the key denies them.
	buggy bool
	// budget clients also make calls as the SDK's Budget does (token
	// buckets only): reserve an estimate on a lease, admit the call on it,
	// keep the lease alive with Extend while the call runs, and settle: a
	// Release of what it did not use, a Charge of what it used beyond
	// (into debt). Now and then a client passes on a provider's 429 or
	// remaining header as a Restrict.
	budget bool
	// noCap runs a known-bad machine whose Charge ignores MaxDebt.
	noCap bool
	// paced clients of a sliding window ask for their leases in pieces
	// (Acquire.Paced), each continuing the last, and spend a piece only
	// within its bucket, at any instant of it; buggy ones spend the next
	// piece's tokens before its bucket begins.
	paced bool
}

// boundStats describes one simulation run.
type boundStats struct {
	admitted, granted, refunded, wasted int64
	acquires, denied, leases, central   int
	releases, abandoned, lateSpends     int
	start, end                          int64
	// actions are the log times at which a client acted, in order: the
	// instants at which a perfect limiter could have admitted its need.
	actions []int64
	// idle is the log time spent in idle spells, and idleCredit what a
	// token bucket could have admitted over them (see spellCredit);
	// stranded is what the spells left in leases that expired before their
	// holders woke.
	idle       int64
	idleCredit float64
	stranded   int64
	// Budget calls: how many were admitted, extended, settled above their
	// reservation; the tokens charged and forgiven; the restricts sent.
	calls, extends, over, restricts int
	charged, forgiven               int64
}

// lambda is the Λ of the bound: the key's longest lease.
func (c *boundSim) lambda() int64 {
	l := int64(c.limit.MaxLease)
	if c.limit.Algorithm == fsm.SlidingWindow {
		l = min(l, int64(c.limit.Period))
	}
	return l
}

type boundLease struct {
	id      uint64
	left    int64 // tokens not yet spent
	expires int64 // grant log time + TTL: spendable strictly before
	// pieces of a pieced lease, in order; left is then their sum.
	pieces []boundPiece
}

// boundPiece is a piece of a pieced lease: left tokens, spendable in log
// time [from, until).
type boundPiece struct {
	from, until, left int64
}

type boundClient struct {
	name    string
	seq     uint64
	lease   *boundLease   // the lease it spends from, if any
	zombies []*boundLease // buggy: dead leases it will spend after expiry
	// demand is what the client would spend, in tokens per second; it sizes
	// Want as an SDK would: demand × target period.
	demand    float64
	notBefore int64 // backoff after a denial
	// caller is set for the budget callers: half the clients of a budget
	// simulation make only calls, the others use leases as before.
	caller bool
	call   *boundCall
	// pacedEnd is where the last pieced lease it was granted ends.
	pacedEnd int64
}

// boundCall is a budget call in flight: admitted on a reservation of
// reserved tokens (a lease, or a central grant), it will turn out to use
// used, and settles at settleAt.
type boundCall struct {
	lease          uint64 // 0: a central reservation, nothing to release
	reserved, used int64
	expires        int64 // the lease's current expiry, extensions included
	settleAt       int64
}

// run simulates 20 clients sharing one key and returns every admission.
func (c *boundSim) run(t testing.TB, seed uint64) ([]boundAdmission, boundStats) {
	const clients = 20
	const key = "shared-key"
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	m := fsm.New()
	if c.noCap {
		m = fsm.NewWithoutDebtCap()
	}
	now := int64(1000 * time.Second)
	apply := func(cmd fsm.Command) fsm.Result {
		rs := m.Apply(fsm.Encode(nil, now, cmd))
		if len(rs) != 1 {
			t.Fatalf("%d results", len(rs))
		}
		if rs[0].Status.Invalid() {
			t.Fatalf("%T: %v: %s", cmd, rs[0].Status, rs[0].Message)
		}
		if rs[0].Time != now {
			t.Fatalf("result time %d, log time %d", rs[0].Time, now)
		}
		return rs[0]
	}
	if r := apply(&fsm.SetLimit{Key: key, Limit: c.limit}); r.Status != fsm.StatusOK {
		t.Fatalf("SetLimit: %v", r.Status)
	}

	lambda := c.lambda()
	noLeases := c.limit.Algorithm == fsm.TokenBucket && c.limit.Strict && c.strictReserve() >= c.limit.Burst
	// The rate the key admits, in tokens per second. Each client acts about
	// every 20 gaps and needs 1 to 3 tokens each time, so that the clients
	// together want five to seven times the rate. Their demand, four times
	// their share of the rate, sizes what they ask for beyond their Count.
	rate := float64(c.limit.Limit) / c.limit.Period.Seconds()
	// An idle spell lasts up to the time the key takes to recover fully.
	idle, capacity := int64(c.limit.Period), c.limit.Limit
	if c.limit.Algorithm == fsm.TokenBucket {
		idle, capacity = int64(float64(c.limit.Burst)/rate*1e9), c.limit.Burst
	}
	cs := make([]*boundClient, clients)
	for i := range cs {
		cs[i] = &boundClient{name: fmt.Sprintf("client-%02d", i), demand: 4 * rate / clients * (0.5 + rng.Float64()),
			caller: c.budget && i%2 == 0}
	}

	var adm []boundAdmission
	var st boundStats
	st.start = now
	spend := func(n int64) {
		if n > 0 {
			adm = append(adm, boundAdmission{now, n})
			st.admitted += n
		}
	}
	// blockedUntil is the end of the latest block a Restrict asked for: no
	// grant may come before it.
	var blockedUntil int64
	checkGrant := func(r fsm.Result) {
		if r.Status == fsm.StatusOK && now < blockedUntil {
			t.Fatalf("granted at %d, during a block until %d: %+v", now, blockedUntil, r)
		}
	}
	lim := c.limit
	budgetStep := func(cl *boundClient) bool {
		return c.budgetStep(t, rng, cl, now, lambda, capacity, &lim, apply, checkGrant, spend, &blockedUntil, &st)
	}
	for range c.steps {
		// Log time moves by random gaps: often a few hundred microseconds,
		// sometimes not at all (commands in one batch), sometimes an idle
		// spell long enough for the key to fill up.
		switch p := rng.Float64(); {
		case p < 0.05:
		case p < 0.05+c.spells/float64(c.steps):
			j := rng.Int64N(idle) + 1
			if c.limit.Algorithm == fsm.TokenBucket {
				st.idleCredit += c.spellCredit(m, key, now, j)
			}
			st.stranded += stranded(cs, now+j)
			now += j
			st.idle += j
		default:
			now += rng.Int64N(2*int64(c.gap)) + 1
		}
		cl := cs[rng.IntN(clients)]
		st.actions = append(st.actions, now)

		if l := cl.lease; l != nil && now >= l.expires {
			if c.buggy {
				cl.zombies = append(cl.zombies, l)
			} else {
				st.wasted += l.left // expired with tokens left
			}
			cl.lease = nil
		}
		if c.budget && (budgetStep(cl) || cl.caller) {
			continue
		}

		if l := cl.lease; l != nil {
			abandon, release := 0.04, 0.06
			if c.buggy {
				abandon = 0.5
			}
			if l.pieces != nil {
				// A pieced lease lasts many visits: abandoning or
				// releasing it as often would waste most of the window.
				abandon, release = 0.004, 0.006
			}
			switch p := rng.Float64(); {
			case p < abandon:
				// Stop using the lease and let it expire.
				st.abandoned++
				cl.lease = nil
				if c.buggy {
					cl.zombies = append(cl.zombies, l)
				} else {
					st.wasted += l.left
				}
			case p < abandon+release:
				// Give the unused tokens back (the lease is marked dead
				// first: nothing is spent from it after this).
				cl.lease = nil
				cl.seq++
				if l.pieces != nil {
					// What a piece over left unspent is not given back:
					// the rest of the piece it is in, and those to come.
					l.left = 0
					for _, pc := range l.pieces {
						if pc.until > now {
							l.left += pc.left
						}
					}
				}
				r := apply(&fsm.Release{ClientID: cl.name, Seq: cl.seq, AckedBelow: cl.seq, LeaseID: l.id, Unused: []int64{l.left}})
				if r.Status != fsm.StatusOK {
					t.Fatalf("release of a live lease: %v", r.Status)
				}
				st.releases++
				st.refunded += l.left
			case l.pieces != nil:
				// A piece only within its bucket (a buggy client: the
				// first piece with tokens, whenever).
				for i := range l.pieces {
					pc := &l.pieces[i]
					in := pc.from <= now && now < pc.until
					if pc.left == 0 || !in && !c.buggy {
						continue
					}
					if !in {
						st.lateSpends++
					}
					n := min(pc.left, 1+rng.Int64N(boundNeed))
					pc.left -= n
					l.left -= n
					spend(n)
					break
				}
				if l.left == 0 {
					cl.lease = nil
				}
			default:
				n := min(l.left, 1+rng.Int64N(boundNeed))
				l.left -= n
				spend(n)
				if l.left == 0 {
					cl.lease = nil
				}
			}
			continue
		}
		if now < cl.notBefore {
			continue
		}

		count := 1 + rng.Int64N(boundNeed)
		central := rng.Float64() < 0.15
		var ttl time.Duration
		want := count
		if !central {
			switch p := rng.Float64(); {
			case p < 0.6:
				ttl = time.Duration(lambda)
			case p < 0.8:
				ttl = time.Duration(lambda / 2)
			default:
				ttl = time.Duration(1 + rng.Int64N(lambda))
			}
			// An SDK asks for what it expects to spend in half a lease.
			want = max(count, int64(cl.demand*ttl.Seconds()/2*(0.5+rng.Float64())))
		}
		cl.seq++
		paced := c.paced && !central
		r := apply(&fsm.Acquire{
			ClientID: cl.name, Seq: cl.seq, AckedBelow: cl.seq, TTL: ttl, Paced: paced, PacedAfter: cl.pacedEnd,
			Items: []fsm.Item{{Key: key, Count: count, Want: want, Limit: &lim}},
		})
		checkGrant(r)
		st.acquires++
		switch r.Status {
		case fsm.StatusDenied:
			st.denied++
			if c.buggy {
				// The bug: denied, the client falls back on what is
				// left of leases that have expired.
				live := cl.zombies[:0]
				for _, z := range cl.zombies {
					if now >= z.expires {
						spend(z.left)
						st.lateSpends++
						continue
					}
					live = append(live, z)
				}
				cl.zombies = live
			}
			if r.RetryAfter <= 0 {
				t.Fatalf("denied with RetryAfter %v", r.RetryAfter)
			}
			cl.notBefore = now + min(int64(r.RetryAfter), int64(time.Second))
			continue
		case fsm.StatusOK:
		default:
			t.Fatalf("acquire: %v", r.Status)
		}
		g := r.Items[0].Granted
		if r.Pieces > 0 {
			st.granted += g
			st.leases++
			if !paced || r.TTL > c.limit.Period || r.LeaseID == 0 || g < count*int64(r.Pieces) {
				t.Fatalf("pieced lease %+v for an acquire of count %d, paced %v", r, count, paced)
			}
			// Pieces of its last r.Pieces buckets; the first is
			// spendable from the grant on.
			p, end := int64(r.Piece), r.Time+int64(r.TTL)
			last, m := (end-1)/p, int64(r.Pieces)
			l := &boundLease{id: r.LeaseID, left: g, expires: end}
			for i := range m {
				b := last - m + 1 + i
				l.pieces = append(l.pieces, boundPiece{from: max(b*p, r.Time), until: min((b+1)*p, end),
					left: limiter.Piece(g, m, i)})
			}
			cl.lease, cl.pacedEnd = l, end
			continue
		}
		if g < count || g > want {
			t.Fatalf("granted %d for count %d, want %d", g, count, want)
		}
		st.granted += g
		if int64(r.TTL) > lambda || r.TTL > max(ttl, 0) {
			t.Fatalf("lease TTL %v: asked %v, key max %v", r.TTL, ttl, time.Duration(lambda))
		}
		if noLeases && (r.TTL != 0 || r.LeaseID != 0) {
			t.Fatalf("strict key with r·Λ >= B granted lease %d of TTL %v", r.LeaseID, r.TTL)
		}
		if (r.LeaseID == 0) != (r.TTL == 0) {
			t.Fatalf("lease id %d with TTL %v", r.LeaseID, r.TTL)
		}
		if r.TTL == 0 {
			// A central decision: everything granted is spent now.
			st.central++
			spend(g)
			continue
		}
		// The Count is what the client needed now; the rest it spends later,
		// strictly before the lease expires.
		st.leases++
		spend(count)
		if g > count {
			cl.lease = &boundLease{id: r.LeaseID, left: g - count, expires: r.Time + int64(r.TTL)}
		}
	}
	st.end = now
	return adm, st
}

// spellCredit is what an idle spell of j nanoseconds, from log time now,
// lets a token bucket admit beyond the rate over the busy time: what it
// regains over the spell, the tokens it lacks at now less those it lacks at
// now+j, read from the machine (nothing changes its state in between), which
// is min(r·j, what it lacked): the rest overflows the burst. The estimate
// used to credit r·j up to a whole burst, as if the key were always drained
// when a spell began: a spell after a busy stretch too short to drain a
// burst of 2000 was credited tokens the key still held, and seeds fell below
// the efficiency floor on that alone (TestBoundSpellCreditsWhatTheKeyLacked).
func (c *boundSim) spellCredit(m *fsm.Machine, key string, now, j int64) float64 {
	return float64(m.Lacking(key, now) - m.Lacking(key, now+j))
}

// stranded is what the clients' leases hold that can no longer be spent
// after log time until: the tokens of leases that expire by then, and of
// pieces whose buckets end by then.
func stranded(cs []*boundClient, until int64) int64 {
	var n int64
	for _, cl := range cs {
		switch l := cl.lease; {
		case l == nil:
		case l.pieces != nil:
			for _, pc := range l.pieces {
				if pc.until <= until {
					n += pc.left
				}
			}
		case l.expires <= until:
			n += l.left
		}
	}
	return n
}

// budgetStep lets client cl act as a budget caller at log time now, if it
// has a budget action to take, and reports whether it took one: settle its
// call in flight when it is due, extend the call's lease when it is about
// to expire and the call runs on, start a call (half the time), or, rarely,
// pass on a provider's block or remaining header as a Restrict.
//
// A call's used tokens count as spent when it is admitted, up to its
// reservation (the lease invariant: before the lease's original expiry),
// and beyond the reservation when the Charge of the rest applies, as much
// as it charged. A call whose lease expired before it settled refunds
// nothing; one in twenty is never settled (its process died): its lease
// expires and what it used beyond its reservation is never charged.
func (c *boundSim) budgetStep(t testing.TB, rng *rand.Rand, cl *boundClient, now, lambda, capacity int64, lim *fsm.Limit,
	apply func(fsm.Command) fsm.Result, checkGrant func(fsm.Result), spend func(int64), blockedUntil *int64, st *boundStats) bool {
	const key = "shared-key"
	next := func() uint64 { cl.seq++; return cl.seq }
	if call := cl.call; call != nil {
		switch {
		case now >= call.settleAt:
			cl.call = nil
			if call.lease != 0 && now < call.expires {
				unused := max(call.reserved-call.used, 0)
				seq := next()
				r := apply(&fsm.Release{ClientID: cl.name, Seq: seq, AckedBelow: seq, LeaseID: call.lease, Unused: []int64{unused}})
				if r.Status != fsm.StatusOK {
					t.Fatalf("release of a live reservation: %v", r.Status)
				}
				st.releases++
				st.refunded += unused
			} else {
				st.wasted += max(call.reserved-call.used, 0)
			}
			if over := call.used - call.reserved; over > 0 {
				seq := next()
				r := apply(&fsm.Charge{ClientID: cl.name, Seq: seq, AckedBelow: seq,
					Items: []fsm.ChargeItem{{Key: key, Tokens: over, Limit: lim}}})
				charged := r.Items[0].Granted // the rest is forgiven
				if r.Status != fsm.StatusOK || charged < 0 || charged > over {
					t.Fatalf("charge of %d: %+v", over, r)
				}
				if !c.noCap && charged > 0 && r.Items[0].Remaining < -lim.MaxDebt {
					t.Fatalf("charge left the key at %d, more than MaxDebt %d below empty", r.Items[0].Remaining, lim.MaxDebt)
				}
				spend(charged)
				st.over++
				st.charged += charged
				st.forgiven += over - charged
			}
			return true
		case call.lease != 0 && now < call.expires && call.settleAt > call.expires && call.expires-now <= lambda/2:
			// The SDK's KeepAlive: the call runs on past the lease.
			seq := next()
			r := apply(&fsm.Extend{ClientID: cl.name, Seq: seq, AckedBelow: seq, LeaseID: call.lease, TTL: time.Duration(lambda)})
			if r.Status != fsm.StatusOK || r.LeaseID != call.lease || now+int64(r.TTL) < call.expires || int64(r.TTL) > lambda {
				t.Fatalf("extend of a live lease until %d, by %v: %+v", call.expires, time.Duration(lambda), r)
			}
			call.expires = now + int64(r.TTL)
			st.extends++
			return true
		}
		return false
	}
	switch p := rng.Float64(); {
	case p < 0.5:
		if now < cl.notBefore {
			return false
		}
		reserved := 1 + rng.Int64N(max(capacity/6, 1))
		ttl := lambda
		if rng.IntN(2) == 0 {
			ttl = lambda / 2
		}
		seq := next()
		r := apply(&fsm.Acquire{ClientID: cl.name, Seq: seq, AckedBelow: seq, TTL: time.Duration(ttl),
			Items: []fsm.Item{{Key: key, Count: reserved, Limit: lim}}})
		checkGrant(r)
		st.acquires++
		if r.Status != fsm.StatusOK {
			st.denied++
			if r.RetryAfter <= 0 {
				t.Fatalf("reservation denied with RetryAfter %v", r.RetryAfter)
			}
			cl.notBefore = now + min(int64(r.RetryAfter), lambda/4)
			return true
		}
		var used int64
		switch q := rng.Float64(); {
		case q < 0.35:
			used = rng.Int64N(reserved + 1)
		case q < 0.6:
			used = reserved
		default: // the estimate was short: settle above, by up to 6×
			used = reserved + 1 + rng.Int64N(6*reserved)
		}
		spend(min(used, reserved)) // the call is admitted now
		// Most calls are short; some run on for up to 3Λ, on extensions.
		call := &boundCall{lease: r.LeaseID, reserved: reserved, used: used, expires: r.Time + int64(r.TTL),
			settleAt: now + 1 + rng.Int64N(lambda/4+1)}
		st.calls++
		switch rng.IntN(20) {
		case 0:
			return true // never settled: its process died, its lease expires
		case 1, 2, 3, 4, 5, 6:
			call.settleAt = now + 1 + rng.Int64N(3*lambda+1)
		}
		cl.call = call
		return true
	case p < 0.501:
		item := fsm.RestrictItem{Key: key, Remaining: fsm.NoRemaining, Limit: lim}
		if rng.IntN(2) == 0 {
			item.BlockFor = time.Duration(1 + rng.Int64N(int64(50*time.Millisecond)))
		} else {
			item.Remaining = rng.Int64N(capacity/10 + 1)
		}
		seq := next()
		r := apply(&fsm.Restrict{ClientID: cl.name, Seq: seq, AckedBelow: seq, Items: []fsm.RestrictItem{item}})
		if r.Status != fsm.StatusOK || r.Items[0].Granted < 0 ||
			item.Remaining != fsm.NoRemaining && r.Items[0].Remaining > item.Remaining {
			t.Fatalf("restrict %+v: %+v", item, r)
		}
		if item.BlockFor > 0 {
			*blockedUntil = max(*blockedUntil, now+int64(item.BlockFor))
		}
		st.restricts++
		return true
	}
	return false
}

// strictReserve is ⌈r·Λ⌉, computed here rather than by the fsm.
func (c *boundSim) strictReserve() int64 {
	num := boundMul(c.limit.Limit, int64(c.limit.MaxLease))
	p := int64(c.limit.Period)
	return (num + p - 1) / p
}

// check runs the checker that fits the configuration and returns the run's
// efficiency: admitted tokens over the most the limit allows in the run.
func (c *boundSim) check(adm []boundAdmission, st boundStats) (efficiency, tightest float64, err error) {
	l := c.limit
	switch l.Algorithm {
	case fsm.TokenBucket:
		lambda := c.lambda()
		if l.Strict {
			lambda = 0
		}
		tightest, err = checkBucketBound(adm, l.Burst+l.MaxDebt, l.Limit, int64(l.Period), lambda)
	case fsm.SlidingWindow:
		tightest, err = checkWindowBound(adm, l.Limit, int64(l.Period))
	}
	efficiency = float64(st.admitted) / c.possible(st)
	return efficiency, tightest, err
}

// possible is the most the key could admit in the run. For a token bucket,
// its burst at the start, the rate over the busy time, and what each idle
// spell let it recover (spellCredit), less what the spells stranded in
// leases: the clients' demand stopped, not the machine's grants. For a
// sliding window, the most any limiter keeping its limit in every window
// could have admitted to the clients' needs at the instants they acted
// (windowMost). The bucket's estimate applied to a window, its limit plus the
// rate over the busy time, credits part of a window beyond the run's last
// whole one, which no window limiter can fill, and spells more or less than
// they let it admit (TestBoundWindowCreditsWhatAWindowCouldAdmit).
func (c *boundSim) possible(st boundStats) float64 {
	l := c.limit
	if l.Algorithm == fsm.SlidingWindow {
		return float64(windowMost(st.actions, l.Limit, int64(l.Period), boundNeed))
	}
	return float64(l.Burst) + float64(l.Limit)*float64(st.end-st.start-st.idle)/float64(l.Period) + st.idleCredit - float64(st.stranded)
}

// windowMost returns the most tokens that can be admitted at the instants at
// (ascending, repeats allowed), at most need at each, with no window
// [a, a+window) holding more than limit: each instant in turn takes all it
// may. Taking early loses nothing. Where another schedule first takes δ less
// than this one, move δ of its later tokens, earliest first, to that instant:
// a window through it then holds what it held, or, if it held fewer than δ
// of them, the earlier instants' tokens plus this one's, which fit.
func windowMost(at []int64, limit, window, need int64) int64 {
	var taken []boundAdmission // in the window ending at the current instant
	var held, total int64
	for _, t := range at {
		for len(taken) > 0 && taken[0].at <= t-window {
			held -= taken[0].tokens
			taken = taken[1:]
		}
		if n := min(need, limit-held); n > 0 {
			taken = append(taken, boundAdmission{t, n})
			held += n
			total += n
		}
	}
	return total
}

func boundSims() []boundSim {
	return []boundSim{
		{
			// A rational rate (13 per 17ms, about 765/s), Λ = 300ms > B/r.
			name:  "bucket",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 13, Period: 17 * time.Millisecond, Burst: 150, MaxLease: 300 * time.Millisecond},
			steps: 9000, gap: 400 * time.Microsecond, spells: 2,
		},
		{
			// A burst that dominates: B = 2000, r·Λ = 200.
			name:  "bucket-big-burst",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second, Burst: 2000, MaxLease: 200 * time.Millisecond},
			steps: 6000, gap: 300 * time.Microsecond, spells: 2,
		},
		{
			// Strict with r·Λ = 200 < B = 1000: leases, and a reserve.
			name:  "strict",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second, Burst: 1000, Strict: true, MaxLease: 200 * time.Millisecond},
			steps: 8000, gap: 300 * time.Microsecond, spells: 2,
		},
		{
			// Strict with r·Λ = 500 >= B = 100: no leases at all.
			name:  "strict-no-lease",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second, Burst: 100, Strict: true, MaxLease: 500 * time.Millisecond},
			steps: 13000, gap: 300 * time.Microsecond, spells: 2,
		},
		{
			// Budget calls on "bucket" with a small debt cap: B + D = 170.
			name: "bucket-debt",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 13, Period: 17 * time.Millisecond, Burst: 150,
				MaxLease: 300 * time.Millisecond, MaxDebt: 20},
			steps: 30000, gap: 400 * time.Microsecond, spells: 4, budget: true,
		},
		{
			// Budget calls without debt: a settle above the reservation is
			// charged down to empty, the rest forgiven.
			name:  "bucket-no-debt",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second, Burst: 500, MaxLease: 200 * time.Millisecond},
			steps: 20000, gap: 300 * time.Microsecond, spells: 4, budget: true,
		},
		{
			// Budget calls on a strict bucket that leases (r·Λ = 200 of
			// 1000) and may owe 100: B + D + r·Δ.
			name: "strict-debt",
			limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second, Burst: 1000, Strict: true,
				MaxLease: 200 * time.Millisecond, MaxDebt: 100},
			steps: 20000, gap: 300 * time.Microsecond, spells: 4, budget: true,
		},
		{
			// A sliding window of 1000 per second in 10 slots, leases of
			// up to 200ms.
			name:  "window",
			limit: fsm.Limit{Algorithm: fsm.SlidingWindow, Limit: 1000, Period: time.Second, Slots: 10, MaxLease: 200 * time.Millisecond},
			steps: 20000, gap: 300 * time.Microsecond, spells: 2,
		},
		{
			// The same window, leased in pieces, counted in 32 buckets of
			// 31.25ms, leases of up to 400ms.
			name: "window-paced",
			limit: fsm.Limit{Algorithm: fsm.SlidingWindow, Limit: 1000, Period: time.Second, Slots: 10, Buckets: 32,
				MaxLease: 400 * time.Millisecond},
			steps: 30000, gap: 300 * time.Microsecond, spells: 2, paced: true,
		},
		{
			// Pieces of whole slots (no Buckets), a rational bucket width
			// (7 slots of 100ms/7 rounded up) and a small limit.
			name:  "window-paced-slots",
			limit: fsm.Limit{Algorithm: fsm.SlidingWindow, Limit: 90, Period: 100 * time.Millisecond, Slots: 7, MaxLease: 60 * time.Millisecond},
			steps: 30000, gap: 300 * time.Microsecond, spells: 2, paced: true,
		},
	}
}

// TestOverAdmissionBound checks invariant 7 on simulated histories of 20
// lessees sharing one key, for several seeds per configuration.
func TestOverAdmissionBound(t *testing.T) {
	base := *boundSeed
	if base == 0 {
		base = rand.Uint64()
	}
	t.Logf("base seed %d (rerun with -bound.seed=%d)", base, base)
	const seeds = 3
	for _, sim := range boundSims() {
		sim.limit = sim.limit.Normalize()
		t.Run(sim.name, func(t *testing.T) {
			var forgiven int64 // over the seeds: one run may never reach the cap
			for k := range uint64(seeds) {
				seed := base + k
				adm, st := sim.run(t, seed)
				forgiven += st.forgiven
				eff, tight, err := sim.check(adm, st)
				t.Logf("seed %d: %d admissions, %d tokens over %v; efficiency %.1f%%, tightest interval at %.1f%% of the bound; "+
					"%d acquires (%d denied, %d leases, %d central), %d releases (%d tokens back), %d abandoned, %d tokens wasted",
					seed, len(adm), st.admitted, time.Duration(st.end-st.start), 100*eff, 100*tight,
					st.acquires, st.denied, st.leases, st.central, st.releases, st.refunded, st.abandoned, st.wasted)
				if err != nil {
					t.Errorf("seed %d: over-admission: %v", seed, err)
				}
				if len(adm) < 2000 && !sim.budget || len(adm) < 1000 {
					t.Errorf("seed %d: only %d admissions; the simulation should produce thousands", seed, len(adm))
				}
				if eff < 0.5 {
					t.Errorf("seed %d: efficiency %.1f%%: demand is several times the limit, so at least half of the limit should be admitted", seed, 100*eff)
				}
				if sim.limit.Algorithm == fsm.SlidingWindow && eff > 1 {
					t.Errorf("seed %d: efficiency %.1f%%: admitted more than any window limiter could", seed, 100*eff)
				}
				if sim.name == "strict-no-lease" && st.leases != 0 {
					t.Errorf("seed %d: %d leases on a key that must not lease", seed, st.leases)
				}
				if sim.name != "strict-no-lease" && st.leases < 100 {
					t.Errorf("seed %d: only %d leases: the simulation should exercise leases", seed, st.leases)
				}
				if sim.budget {
					t.Logf("seed %d: %d calls, %d extends, %d settled above (%d tokens charged, %d forgiven), %d restricts",
						seed, st.calls, st.extends, st.over, st.charged, st.forgiven, st.restricts)
					if st.calls < 50 || st.extends < 20 || st.over < 20 || st.restricts < 5 {
						t.Errorf("seed %d: the simulation should exercise calls, extends, settles above and restricts", seed)
					}
				}
			}
			if sim.budget && forgiven == 0 {
				t.Errorf("no charge reached the debt cap in %d seeds: the simulation should exercise it", seeds)
			}
		})
	}
}

// TestBoundSpellCreditsWhatTheKeyLacked runs the seed of bucket-big-burst
// whose idle spells came after busy stretches too short to drain its burst of
// 2000: the first began 79ms into the run with 1272 tokens left, the second
// 20ms after the first ended with 1652. Crediting each spell up to a whole
// burst counted over 2000 tokens the key never lacked, and put the run at
// 49.3% of what it could admit, below the floor of half; credited what the
// key lacked, it is at 65.5% (70.2% once what its spells stranded in leases
// is left out too).
func TestBoundSpellCreditsWhatTheKeyLacked(t *testing.T) {
	runBoundSeed(t, "bucket-big-burst", 699964204453188761)
}

// TestBoundLeavesOutWhatSpellsStrand runs the seed of window-paced idle for
// 4.4s of its 13s: its spells stranded 1257 tokens in pieced leases that
// expired before their holders woke, and the window regained less over them
// than r·j. Counted as the machine's waste, and credited r·j, they put the
// run at 48.4%, below the floor; left out, and credited what the window
// regained, at 63.9%. Against the most a window limiter could have admitted
// at the instants the clients acted, where a spell offers nothing and so
// strands nothing, it is at 57.8%.
func TestBoundLeavesOutWhatSpellsStrand(t *testing.T) {
	runBoundSeed(t, "window-paced", 1163581898776224158)
}

// TestBoundWindowCreditsWhatAWindowCouldAdmit runs seed 640 of window, which
// the estimate of a bucket, applied to a window, put at 48.5% of what it could
// admit, below the floor of half: it credited 11657 tokens over a run of
// 9.6s, where ten windows of a second cover the run and no limiter keeping
// 1000 in every window could have admitted more than 10000. Every window
// simulation's estimate must lie between what was admitted and that tiling
// bound.
func TestBoundWindowCreditsWhatAWindowCouldAdmit(t *testing.T) {
	runBoundSeed(t, "window", 640)
	for _, sim := range boundSims() {
		if sim.limit.Algorithm != fsm.SlidingWindow {
			continue
		}
		sim.limit = sim.limit.Normalize()
		l := sim.limit
		for _, seed := range []uint64{1, 2, 3, 640} {
			_, st := sim.run(t, seed)
			possible := sim.possible(st)
			tiled := l.Limit * ((st.end-st.start)/int64(l.Period) + 1)
			if possible > float64(tiled) || float64(st.admitted) > possible {
				t.Errorf("%s seed %d: %.0f credited for %d admitted over %v; %d windows of %v cover the run, so at most %d",
					sim.name, seed, possible, st.admitted, time.Duration(st.end-st.start),
					tiled/l.Limit, l.Period, tiled)
			}
		}
	}
}

// runBoundSeed runs the simulation called name on seed, and fails if it
// over-admits or admits less than half of what the key could.
func runBoundSeed(t *testing.T, name string, seed uint64) {
	t.Helper()
	sims := boundSims()
	i := slices.IndexFunc(sims, func(s boundSim) bool { return s.name == name })
	sim := sims[i]
	sim.limit = sim.limit.Normalize()
	adm, st := sim.run(t, seed)
	eff, tight, err := sim.check(adm, st)
	t.Logf("seed %d: %d tokens over %v, %v of it idle, %d stranded by it; efficiency %.1f%%, tightest interval at %.1f%% of the bound",
		seed, st.admitted, time.Duration(st.end-st.start), time.Duration(st.idle), st.stranded, 100*eff, 100*tight)
	if err != nil {
		t.Errorf("over-admission: %v", err)
	}
	if eff < 0.5 {
		t.Errorf("efficiency %.1f%%: the estimate credits more than the key could admit, or the machine leaves it unused", 100*eff)
	}
}

// TestBoundCatchesUseAfterExpiry runs the simulation with clients that keep
// spending abandoned leases after they expire, and requires the checker to
// catch it: a simulation and checker that cannot fail prove nothing.
func TestBoundCatchesUseAfterExpiry(t *testing.T) {
	for _, sim := range boundSims() {
		if sim.budget {
			continue // TestBoundCatchesMissingDebtCap
		}
		switch sim.name {
		case "strict-no-lease":
			continue // no leases to misuse
		case "bucket":
			// Demand keeps this bucket so empty that a lease holds
			// little beyond its Count, which is spent at once: there is
			// nothing to misuse.
			continue
		}
		sim.limit = sim.limit.Normalize()
		sim.buggy = true
		t.Run(sim.name, func(t *testing.T) {
			caught := 0
			var first error
			const seeds = 8
			for seed := uint64(1); seed <= seeds; seed++ {
				adm, st := sim.run(t, seed)
				if st.lateSpends == 0 {
					t.Fatalf("seed %d: the buggy clients never spent after expiry", seed)
				}
				if _, _, err := sim.check(adm, st); err != nil {
					caught++
					if first == nil {
						first = fmt.Errorf("seed %d: %w", seed, err)
					}
				}
			}
			t.Logf("use after expiry caught for %d of %d seeds; first: %v", caught, seeds, first)
			if caught == 0 {
				t.Errorf("spending after expiry was never flagged in %d seeds", seeds)
			}
		})
	}
}

// TestBoundCatchesMissingDebtCap runs the budget simulations on a known-bad
// machine whose Charge ignores MaxDebt, and requires the checker to catch
// it: without the cap, settles above their reservations charge more than
// B + D over short intervals.
func TestBoundCatchesMissingDebtCap(t *testing.T) {
	for _, sim := range boundSims() {
		if !sim.budget || sim.name == "bucket-debt" {
			// bucket-debt's cap forgives a few hundred tokens in a run, a
			// few at a time, within the slack of its leases (r·Λ = 230):
			// nothing to catch.
			continue
		}
		sim.limit = sim.limit.Normalize()
		sim.noCap = true
		t.Run(sim.name, func(t *testing.T) {
			caught := 0
			var first error
			const seeds = 6
			for seed := uint64(1); seed <= seeds; seed++ {
				adm, st := sim.run(t, seed)
				if st.forgiven != 0 {
					t.Fatalf("seed %d: the machine without a cap forgave %d tokens", seed, st.forgiven)
				}
				if _, _, err := sim.check(adm, st); err != nil {
					caught++
					if first == nil {
						first = fmt.Errorf("seed %d: %w", seed, err)
					}
				}
			}
			t.Logf("a missing debt cap caught for %d of %d seeds; first: %v", caught, seeds, first)
			if caught == 0 {
				t.Errorf("a missing debt cap was never flagged in %d seeds", seeds)
			}
		})
	}
}

// TestBoundCheckerFails feeds the checkers known-bad histories, which they must
// reject, and histories exactly at the bound, which they must accept.
func TestBoundCheckerFails(t *testing.T) {
	const (
		s      = int64(time.Second)
		ms     = int64(time.Millisecond)
		burst  = 100
		rate   = 10 // per second
		lambda = 2 * s
	)
	steady := func(start int64, n int) []boundAdmission {
		// The burst at once, then one token every period/rate.
		adm := []boundAdmission{{start, burst}}
		for i := 1; i <= n; i++ {
			adm = append(adm, boundAdmission{start + int64(i)*s/rate, 1})
		}
		return adm
	}
	cases := []struct {
		name   string
		adm    []boundAdmission
		lambda int64 // -1: the window checker
		bad    bool
	}{
		{"leased: B + r·Λ at one instant", []boundAdmission{{5 * s, 60}, {5 * s, burst + rate*2 - 60}}, lambda, false},
		{"leased: B + r·Λ + 1 at one instant", []boundAdmission{{5 * s, 60}, {5 * s, burst + rate*2 + 1 - 60}}, lambda, true},
		{"strict: B at one instant", []boundAdmission{{5 * s, burst}}, 0, false},
		{"strict: B + 1 at one instant", []boundAdmission{{5 * s, burst}, {5 * s, 1}}, 0, true},
		{"strict: steady at the rate after a burst", steady(0, 500), 0, false},
		{"strict: one token early", append(steady(0, 500), boundAdmission{50*s - 1, 1}), 0, true},
		{"leased: a bucket reset, B twice in 10ms", []boundAdmission{{5 * s, burst}, {5*s + 10*ms, burst}}, lambda, true},
		{"strict: a bucket reset, B twice in 9s", []boundAdmission{{5 * s, burst}, {14 * s, burst}}, 0, true},
		{"strict: B twice 10s apart", []boundAdmission{{5 * s, burst}, {15 * s, burst}}, 0, false},
		{"window: L in a window", []boundAdmission{{5 * s, 99}, {6*s - 1, 1}, {6 * s, 99}}, -1, false},
		{"window: L + 1 in a window", []boundAdmission{{5 * s, 99}, {6*s - 1, 2}, {6 * s, 99}}, -1, true},
		{"window: L + 1 at one instant", []boundAdmission{{5 * s, 101}}, -1, true},
	}
	for _, c := range cases {
		var err error
		if c.lambda < 0 {
			_, err = checkWindowBound(c.adm, burst, s)
		} else {
			_, err = checkBucketBound(c.adm, burst, rate, s, c.lambda)
		}
		switch {
		case c.bad && err == nil:
			t.Errorf("%s: not flagged", c.name)
		case !c.bad && err != nil:
			t.Errorf("%s: flagged: %v", c.name, err)
		case err != nil:
			t.Logf("%s: %v", c.name, err)
		}
	}
}
