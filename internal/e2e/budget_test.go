package e2e

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasehold/leasehold/client"
)

// charge is n tokens charged to a rule somewhere in [invoke, ret]: a
// reservation's admission (what its call then used, up to what it
// reserved) or a settle's excess over it.
type charge struct {
	invoke, ret time.Duration
	n           int64
}

// budgetExcess checks the bound with debt over every window [a.invoke,
// b.ret] between two events: the tokens of the events whose whole [invoke,
// ret] lies inside must be at most B + D + r·(Δ + Λ). It returns the largest
// excess found (<= 0: the bound held) and its window.
func budgetExcess(ev []charge, burst, debt, ratePerSec float64, lease time.Duration) (excess float64, from, to time.Duration) {
	byInvoke := slices.Clone(ev)
	slices.SortFunc(byInvoke, func(x, y charge) int { return int(x.invoke - y.invoke) })
	byRet := slices.Clone(ev)
	slices.SortFunc(byRet, func(x, y charge) int { return int(x.ret - y.ret) })
	excess = -burst - debt
	for _, a := range byInvoke {
		var n int64
		for _, b := range byRet {
			if b.ret < a.invoke {
				continue
			}
			if b.invoke >= a.invoke {
				n += b.n
			}
			allowed := burst + debt + ratePerSec*(b.ret-a.invoke+lease).Seconds()
			if e := float64(n) - allowed; e > excess {
				excess, from, to = e, a.invoke, b.ret
			}
		}
	}
	return excess, from, to
}

// TestBudgetCheckerCatchesOverCharge shows budgetExcess can fail: a history
// one token over B + D + r·(Δ + Λ) is caught, one at it passes.
func TestBudgetCheckerCatchesOverCharge(t *testing.T) {
	const burst, debt, rate, lease = 100, 50, 10, time.Second // at one instant: 100 + 50 + 10·1
	at := func(d time.Duration, n int64) charge { return charge{d, d, n} }
	for _, tt := range []struct {
		name string
		ev   []charge
		over bool
	}{
		{"at the bound", []charge{at(time.Second, 100), at(time.Second, 60)}, false},
		{"one over", []charge{at(time.Second, 100), at(time.Second, 61)}, true},
		{"a settle's excess a second later", []charge{at(time.Second, 160), at(2*time.Second, 11)}, true},
		{"the same, within the refill", []charge{at(time.Second, 160), at(2*time.Second, 10)}, false},
	} {
		excess, _, _ := budgetExcess(tt.ev, burst, debt, rate, lease)
		if got := excess > 0; got != tt.over {
			t.Errorf("%s: excess %.1f, caught %v; want %v", tt.name, excess, got, tt.over)
		}
	}
}

// sharedRules are the e2e budget: 100 requests, 30k input and 30k output
// tokens a second, the keys' MaxLease 2s and MaxDebt their bursts.
func sharedRules() []client.Rule {
	return []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 100, Per: time.Second}},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 30_000, Per: time.Second}},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 30_000, Per: time.Second}},
	}
}

// TestBudgetSharedWithinBound: four SDK clients share a budget of three
// rules on a real three-node cluster (TLS), 8 callers each, far above its
// limits, reserving with estimates and settling with usage below and above
// them (and cancelling some). For every rule, what the calls used, counted
// when they were admitted, plus what settles charged beyond their
// reservations, stays within B + D + r·(Δ + Λ) in every window.
func TestBudgetSharedWithinBound(t *testing.T) {
	c := startCluster(t, 3)
	const (
		run   = 8 * time.Second
		lease = 2 * time.Second
	)
	clients := dialClients(t, c, 4)
	start := time.Now()
	var (
		mu       sync.Mutex
		events   [3][]charge
		admitted int
		refused  int
	)
	var wg sync.WaitGroup
	for ci, cl := range clients {
		b := cl.Budget("e2e:budget", sharedRules()...)
		for g := range 8 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(ci), uint64(g)))
				for range 10_000 {
					if time.Since(start) > run {
						return
					}
					est := client.Cost{Requests: 1, InputTokens: 100 + rng.Int64N(400), OutputTokens: 200 + rng.Int64N(800)}
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					inv := time.Since(start)
					r, err := b.Reserve(ctx, est)
					ret := time.Since(start)
					cancel()
					if err != nil {
						mu.Lock()
						refused++
						mu.Unlock()
						continue
					}
					time.Sleep(time.Duration(rng.Int64N(int64(50 * time.Millisecond)))) // the call
					actual := client.Cost{}
					if rng.IntN(10) > 0 { // else: not sent, cancelled
						actual = client.Cost{Requests: 1, InputTokens: est.InputTokens * (90 + rng.Int64N(20)) / 100,
							OutputTokens: rng.Int64N(est.OutputTokens*3/2 + 1)}
					}
					sinv := time.Since(start)
					if actual == (client.Cost{}) {
						r.Cancel()
					} else if err := r.Settle(context.Background(), actual); err != nil {
						t.Errorf("Settle: %v", err)
					}
					sret := time.Since(start)
					mu.Lock()
					admitted++
					for k, pair := range [3][2]int64{{est.Requests, actual.Requests}, {est.InputTokens, actual.InputTokens},
						{est.OutputTokens, actual.OutputTokens}} {
						events[k] = append(events[k], charge{inv, ret, min(pair[0], pair[1])})
						if extra := pair[1] - pair[0]; extra > 0 {
							events[k] = append(events[k], charge{sinv, sret, extra})
						}
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	closeClients(t, clients)
	t.Logf("%d reservations admitted, %d refused (deadline) in %v", admitted, refused, elapsed.Round(time.Millisecond))
	for k, r := range sharedRules() {
		burst, rate := float64(r.Limit.Rate), float64(r.Limit.Rate) // burst = rate, per second
		excess, from, to := budgetExcess(events[k], burst, burst, rate, lease)
		var used int64
		for _, e := range events[k] {
			used += e.n
		}
		t.Logf("%v: used %d; B + rΔ = %.0f, B + D + r(Δ+Λ) = %.0f; worst window excess %.1f",
			r.Counts, used, burst+rate*elapsed.Seconds(), 2*burst+rate*(elapsed+lease).Seconds(), excess)
		if excess > 0 {
			t.Errorf("%v over its bound: window [%v, %v] exceeds B + D + r(Δ+Λ) by %.1f", r.Counts, from, to, excess)
		}
	}
	if admitted < 200 {
		t.Errorf("only %d reservations admitted; the run does not exercise the budget", admitted)
	}
}

// TestBudgetRaftEntriesPer1000: a hot budget shared by four clients, 4
// callers each at about 1000 reservations a second in all, against limits
// twice that: how many Raft entries the cluster writes per 1000
// reservations (the leader's commit index), in the steady state (after the
// first second, before the clients close) and over the whole run (their
// first, central reservations and closing releases included).
//
// The steady state is judged over the spells with one leader: the leader's
// term and commit index, and the reservations done so far, are sampled
// every 250 ms, and only the spans between two samples of the same term
// count, in a new term from a second after its reservations resumed (an
// election writes entries of its own, and the reservations retried across
// it renew their leases). Until 2026-12-06 the test skipped its judgment
// on any run with an election, which under load was half of them.
func TestBudgetRaftEntriesPer1000(t *testing.T) {
	c := startCluster(t, 3)
	const (
		run    = 8 * time.Second
		warmup = time.Second
		every  = 250 * time.Millisecond
		// settle is how long after the reservations resumed in a new
		// term its spans start to count (the first term: the warmup).
		settle = time.Second
		// judged is the fewest reservations the one-leader spans
		// must hold for a judgment: about a second of the run.
		judged = 1000
	)
	rules := []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 2000, Per: time.Second}},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 1_000_000, Per: time.Second}},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 1_000_000, Per: time.Second}},
	}
	clients := dialClients(t, c, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// read samples the leader's term and commit index, waiting (bounded)
	// for a leader, then the reservations done by then. Regression (a
	// loaded machine: the leader stepped down for missing its followers'
	// answers for 300ms): the samples asked once and failed the test,
	// from a goroutine, with "no node is the leader" at an instant an
	// election was on.
	type sample struct {
		at           time.Duration // since start, when read
		term, commit uint64
		reserved     int64 // reservations settled by then
		err          error
	}
	var (
		start    time.Time
		reserved atomic.Int64
	)
	read := func() sample {
		st, err := c.waitLeaderStatus(10 * time.Second)
		return sample{time.Since(start), st.Status.GetTerm(), st.Status.GetCommitIndex(), reserved.Load(), err}
	}
	start = time.Now()
	s0 := read()
	if s0.err != nil {
		t.Fatal(s0.err)
	}
	var samples []sample // in order, every `every` of the run
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for time.Since(start) < run {
			<-tick.C
			samples = append(samples, read())
		}
	})
	for _, cl := range clients {
		b := cl.Budget("e2e:hot", rules...)
		for range 4 {
			wg.Go(func() {
				tick := time.NewTicker(16 * time.Millisecond)
				defer tick.Stop()
				for n := 0; time.Since(start) < run && n < 10_000; n++ {
					<-tick.C
					r, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 300, OutputTokens: 500})
					if err != nil {
						t.Errorf("Reserve: %v", err)
						return
					}
					r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 290, OutputTokens: 120})
					reserved.Add(1)
				}
			})
		}
	}
	wg.Wait()
	closeClients(t, clients)
	s1 := read()
	for _, s := range append(samples, s1) {
		if s.err != nil {
			t.Fatal(s.err)
		}
	}
	entries, inSpells, terms := steadySpells(append([]sample{s0}, samples...), warmup, settle, run,
		func(s sample) (time.Duration, uint64, uint64, int64) { return s.at, s.term, s.commit, s.reserved })
	all := 1000 * float64(s1.commit-s0.commit) / float64(s1.reserved)
	t.Logf("%d reservations in %v: %d Raft entries, %.2f per 1000 reservations (terms %d to %d); one-leader spells of the steady state: %d reservations, %d entries, %.2f per 1000 (%d terms)",
		s1.reserved, time.Since(start).Round(time.Millisecond), s1.commit-s0.commit, all, s0.term, s1.term,
		inSpells, entries, 1000*float64(entries)/float64(max(inSpells, 1)), terms)
	if inSpells < judged {
		t.Skipf("the one-leader spells hold %d reservations, fewer than %d: elections took the run", inSpells, judged)
	}
	if steady := 1000 * float64(entries) / float64(inSpells); steady > 10 {
		t.Errorf("%.2f Raft entries per 1000 reservations in the steady state; the goal is at most 10", steady)
	}
}

// steadySpells sums, over consecutive samples (in order) of the same term,
// the entries committed and the reservations done between them: only spans
// inside [warmup, run], and in a term other than the first sample's, only
// from settle after the reservations resumed in it (the end of its first
// span that did any: callers of a paused old leader wait for their attempt
// timeout, then retry and renew their leases at once). It also returns how
// many terms contributed. get reads a sample's time, term, commit index and
// reservations so far.
func steadySpells[S any](samples []S, warmup, settle, run time.Duration, get func(S) (time.Duration, uint64, uint64, int64)) (entries uint64, reserved int64, terms int) {
	if len(samples) == 0 {
		return 0, 0, 0
	}
	_, firstTerm, _, _ := get(samples[0])
	resumed := map[uint64]time.Duration{} // by term
	counted := map[uint64]bool{}
	for i := 1; i < len(samples); i++ {
		at, term, commit, done := get(samples[i])
		pat, pterm, pcommit, pdone := get(samples[i-1])
		if pterm != term {
			continue // an election: its entries are not the steady state's
		}
		from := warmup
		if term != firstTerm {
			r, ok := resumed[term]
			if !ok {
				if done == pdone {
					continue
				}
				r = at
				resumed[term] = r
			}
			from = max(from, r+settle)
		}
		if pat < from || at > run || commit < pcommit {
			continue
		}
		entries += commit - pcommit
		reserved += done - pdone
		if !counted[term] {
			counted[term] = true
			terms++
		}
	}
	return entries, reserved, terms
}

// TestSteadySpellsCountsOnlyOneLeaderSpells: the spans that count are those
// between two samples of one term, inside [warmup, run], and in a later
// term only from settle after the reservations resumed in it; an election's
// entries (the span across a term change), a stall and the new term's
// first second of reservations are left out.
func TestSteadySpellsCountsOnlyOneLeaderSpells(t *testing.T) {
	type s struct {
		at           time.Duration
		term, commit uint64
		done         int64
	}
	get := func(x s) (time.Duration, uint64, uint64, int64) { return x.at, x.term, x.commit, x.done }
	ms := time.Millisecond
	samples := []s{
		{0, 2, 100, 0},
		{500 * ms, 2, 110, 500},   // warmup
		{1000 * ms, 2, 111, 1000}, // warmup: ends at 1 s, begins before
		{1500 * ms, 2, 113, 1500}, // counts: 2 entries, 500
		{2000 * ms, 3, 200, 1600}, // across the election: out
		{2250 * ms, 3, 200, 1600}, // stalled: out
		{2500 * ms, 3, 260, 1900}, // resumed at 2.5 s: out
		{3000 * ms, 3, 262, 2400}, // within settle of 2.5 s: out
		{3500 * ms, 3, 265, 2900}, // begins before 3.5 s: out
		{4000 * ms, 3, 266, 3400}, // counts: 1 entry, 500
		{4500 * ms, 3, 300, 3900}, // past run: out
	}
	entries, reserved, terms := steadySpells(samples, time.Second, time.Second, 4*time.Second, get)
	if entries != 3 || reserved != 1000 || terms != 2 {
		t.Errorf("entries %d, reserved %d, terms %d; want 3, 1000, 2", entries, reserved, terms)
	}
	// With no election, every span after the warmup counts.
	entries, reserved, terms = steadySpells(samples[:4], time.Second, time.Second, 4*time.Second, get)
	if entries != 2 || reserved != 500 || terms != 1 {
		t.Errorf("one term: entries %d, reserved %d, terms %d; want 2, 500, 1", entries, reserved, terms)
	}
}
