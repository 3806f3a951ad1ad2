package e2e

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
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
func TestBudgetRaftEntriesPer1000(t *testing.T) {
	c := startCluster(t, 3)
	const (
		run    = 8 * time.Second
		warmup = time.Second
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
	// for a leader. Regression (a loaded machine: the leader stepped down
	// for missing its followers' answers for 300ms): the samples asked
	// once and failed the test, from a goroutine, with "no node is the
	// leader" at an instant an election was on. The entries are judged
	// only on a run with one leader throughout, one term at every sample:
	// an election writes entries and retries reservations that are not the
	// steady state's.
	type sample struct {
		term, commit uint64
		err          error
	}
	read := func() sample {
		st, err := c.waitLeaderStatus(10 * time.Second)
		return sample{st.Status.GetTerm(), st.Status.GetCommitIndex(), err}
	}
	s0 := read()
	if s0.err != nil {
		t.Fatal(s0.err)
	}
	start := time.Now()
	var (
		mu                 sync.Mutex
		reserved, inSteady int
		warm, end          sample
	)
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(warmup)
		warm = read()
		time.Sleep(run - warmup)
		end = read()
	})
	for _, cl := range clients {
		b := cl.Budget("e2e:hot", rules...)
		for range 4 {
			wg.Go(func() {
				tick := time.NewTicker(16 * time.Millisecond)
				defer tick.Stop()
				n, steady := 0, 0
				for time.Since(start) < run && n < 10_000 {
					<-tick.C
					r, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 300, OutputTokens: 500})
					if err != nil {
						t.Errorf("Reserve: %v", err)
						return
					}
					r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 290, OutputTokens: 120})
					n++
					if d := time.Since(start); d > warmup && d < run {
						steady++
					}
				}
				mu.Lock()
				reserved += n
				inSteady += steady
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	closeClients(t, clients)
	s1 := read()
	for _, s := range []sample{warm, end, s1} {
		if s.err != nil {
			t.Fatal(s.err)
		}
	}
	if s0.term != warm.term || warm.term != end.term || end.term != s1.term {
		t.Skipf("an election during the run (terms %d, %d, %d, %d): entries not comparable", s0.term, warm.term, end.term, s1.term)
	}
	commit0, commitWarm, commitEnd, commit1 := s0.commit, warm.commit, end.commit, s1.commit
	all := 1000 * float64(commit1-commit0) / float64(reserved)
	steady := 1000 * float64(commitEnd-commitWarm) / float64(inSteady)
	t.Logf("%d reservations in %v: %d Raft entries, %.2f per 1000 reservations; steady state (%d reservations): %d entries, %.2f per 1000",
		reserved, time.Since(start).Round(time.Millisecond), commit1-commit0, all, inSteady, commitEnd-commitWarm, steady)
	if steady > 10 {
		t.Errorf("%.2f Raft entries per 1000 reservations in the steady state; the goal is at most 10", steady)
	}
}
