//go:build unix

package jepsen

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// This file generates correct histories from a deliberately simple model of
// the cluster — an exact integer token bucket, and a sliding window that
// counts each lease against everything within a window of its life — with
// many lessees, timing noise, retries, unknown outcomes, releases, central
// decisions and faults. Every checker must pass every one of them; and each
// one, given a single injected violation, must fail.

// simKeys are the keys of a simulated run.
var simKeys = []KeySpec{
	{Key: "bucket", Algorithm: AlgorithmTokenBucket, Limit: 100, Period: time.Second, Burst: 50, MaxLease: 500 * time.Millisecond},
	{Key: "strict", Algorithm: AlgorithmTokenBucket, Limit: 200, Period: time.Second, Burst: 100, Strict: true, MaxLease: 200 * time.Millisecond},
	{Key: "window", Algorithm: AlgorithmSlidingWindow, Limit: 60, Period: time.Second, MaxLease: 300 * time.Millisecond},
}

// simModel decides grants for one key, at apply time t (nanoseconds).
type simModel interface {
	grant(t, want, ttl int64) (granted int64, ref any)
	refund(t, unused int64, ref any)
}

// simBucket is a token bucket in exact integers: level counts tokens times
// the period, and refills by limit per nanosecond.
type simBucket struct {
	limit, period, capacity int64
	level, last             int64
}

func newSimBucket(k KeySpec) *simBucket {
	burst := k.Burst
	if k.Strict { // hold back ⌈r·Λ⌉ from every grant
		burst -= (k.Limit*int64(k.MaxLease) + int64(k.Period) - 1) / int64(k.Period)
	}
	b := &simBucket{limit: k.Limit, period: int64(k.Period), capacity: burst * int64(k.Period)}
	b.level = b.capacity
	return b
}

func (b *simBucket) refill(t int64) {
	if t > b.last {
		b.level = min(b.capacity, b.level+b.limit*(t-b.last))
		b.last = t
	}
}

func (b *simBucket) grant(t, want, _ int64) (int64, any) {
	b.refill(t)
	g := min(want, b.level/b.period)
	b.level -= g * b.period
	return g, nil
}

func (b *simBucket) refund(t, unused int64, _ any) {
	b.refill(t)
	b.level = min(b.capacity, b.level+unused*b.period)
}

// simWindow admits a grant only if it fits with every lease whose life
// comes within one window of the new lease's life.
type simWindow struct {
	limit, window int64
	leases        []*simLife
}

type simLife struct{ start, end, amount int64 }

func (w *simWindow) grant(t, want, ttl int64) (int64, any) {
	var used int64
	for _, l := range w.leases {
		if l.start <= t+ttl+w.window && l.end >= t-w.window {
			used += l.amount
		}
	}
	g := max(min(want, w.limit-used), 0)
	l := &simLife{start: t, end: t + ttl, amount: g}
	w.leases = append(w.leases, l)
	return g, l
}

func (w *simWindow) refund(_ int64, unused int64, ref any) { ref.(*simLife).amount -= unused }

// simRun is a generated history and what it needs to be corrupted.
type simRun struct {
	h       testHistory
	leases  []simLease // ok leases, for the mutations
	horizon int64
}

type simLease struct {
	key, client   string
	seq, id       uint64
	invoke, ttl   int64
	granted, used int64
}

// simulate generates a correct history of about horizon.
func simulate(seed uint64, horizon time.Duration) *simRun {
	rng := rand.New(rand.NewPCG(seed, 42))
	run := &simRun{horizon: int64(horizon)}
	h := &run.h
	noise := func(maxMs float64) int64 { return rng.Int64N(msec(maxMs) + 1) }

	// Faults: one full-cluster outage and a leader pause; no grant applies
	// during either, and log time does not advance.
	type gap struct{ start, end int64 }
	kill := msec(2000) + rng.Int64N(int64(horizon)/3)
	pause := kill + msec(2500) + rng.Int64N(msec(1000))
	gaps := []gap{{kill, kill + msec(500) + rng.Int64N(msec(1000))}, {pause, pause + msec(300) + rng.Int64N(msec(700))}}
	h.nemesis(OpKill, "leader:n1,n2,n3", gaps[0].start-msec(1), gaps[0].start)
	h.nemesis(OpRestart, "leader:n1,n2,n3", gaps[0].end, gaps[0].end+msec(50))
	h.nemesis(OpPause, "leader:n2", gaps[1].start-msec(1), gaps[1].start)
	h.nemesis(OpResume, "n2", gaps[1].end, gaps[1].end+msec(1))
	h.nemesis(OpKill, "n3", msec(500), msec(501))
	h.nemesis(OpRestart, "n3", msec(900), msec(1000))
	logTime := func(t int64) int64 {
		lt := t + int64(time.Hour)
		for _, g := range gaps {
			if t > g.start {
				lt -= min(t, g.end) - g.start
			}
		}
		return lt
	}
	inGap := func(t int64) (int64, bool) {
		for _, g := range gaps {
			if t >= g.start && t <= g.end {
				return g.end, true
			}
		}
		return 0, false
	}

	clients := []string{"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"}
	seqs := make(map[string]uint64)
	var nextLease uint64
	for _, k := range simKeys {
		var model simModel
		if k.Algorithm == AlgorithmSlidingWindow {
			model = &simWindow{limit: k.Limit, window: int64(k.Period)}
		} else {
			model = newSimBucket(k)
		}
		type pending struct {
			z, unused int64
			ref       any
		}
		var refunds []pending
		for t := msec(1); ; {
			t += msec(1) + rng.Int64N(msec(12))
			if end, in := inGap(t); in {
				t = end + msec(1) + rng.Int64N(msec(30))
			}
			if t > int64(horizon) {
				break
			}
			slices.SortFunc(refunds, func(x, y pending) int { return int(x.z - y.z) })
			for len(refunds) > 0 && refunds[0].z <= t {
				model.refund(refunds[0].z, refunds[0].unused, refunds[0].ref)
				refunds = refunds[1:]
			}
			client := clients[rng.IntN(len(clients))]
			seqs[client]++
			seq := seqs[client]
			in := Event{Key: k.Key, N: 1 + rng.Int64N(3), ClientID: client, Seq: seq}
			t0, t1 := t-noise(3), t+noise(3)
			kind := rng.IntN(100)
			ttl := int64(k.MaxLease)/2 + rng.Int64N(int64(k.MaxLease)/2+1)
			if kind < 10 {
				ttl = 0 // a central decision
			}
			g, ref := model.grant(t, 1+rng.Int64N(20), ttl)
			switch {
			case g == 0:
				h.op(client, OpGrant, t0, t1, Fail, in, Event{Value: "denied"})
				h.op(client, OpAllow, t0, t1+noise(1), Fail, Event{Key: k.Key, N: 1}, Event{})
				continue
			case kind < 10:
				// Central: the allow encloses the grant and spends it all.
				h.op(client, OpGrant, t0, t1, OK, in, Event{N: g, LogTime: logTime(t)})
				h.op(client, OpAllow, t0-noise(1), t1+noise(1), OK, Event{Key: k.Key, N: g}, Event{})
				continue
			case kind < 13:
				// Applied, but the client never learns it.
				typ := Info
				if kind == 12 {
					typ = ""
				}
				h.op(client, OpGrant, t0, t1+msec(100), typ, in, Event{})
				continue
			}
			nextLease++
			id := nextLease
			out := Event{Lease: id, N: g, TTL: ttl, LogTime: logTime(t)}
			h.op(client, OpGrant, t0, t1, OK, in, out)
			if kind < 18 { // a retry answered from the dedup table
				h.op(client, OpGrant, t1+msec(1), t1+msec(2), OK, in, out)
			}
			// Spend some of it before the SDK's deadline, sent + ttl less a
			// margin, at random moments.
			deadline := t0 + ttl - msec(1)
			var used, last int64
			var spends []int64
			spend := g // most clients spend all they hold
			if rng.IntN(3) == 0 {
				spend = rng.Int64N(g + 1)
			}
			for range spend {
				spends = append(spends, t1+rng.Int64N(max(deadline-t1, 1)))
			}
			slices.Sort(spends)
			for _, y := range spends {
				if used >= g {
					break
				}
				n := min(1+rng.Int64N(2), g-used)
				used += n
				last = y
				h.op(client, OpAllow, y-noise(1), y+noise(1), OK, Event{Key: k.Key, N: n}, Event{Lease: id})
			}
			run.leases = append(run.leases, simLease{key: k.Key, client: client, seq: seq, id: id, invoke: t0, ttl: ttl, granted: g, used: used})
			if used < g && rng.IntN(10) < 4 {
				z := max(last, t1) + msec(2) + rng.Int64N(msec(50))
				relIn := Event{Lease: id, N: g - used}
				if rng.IntN(2) == 0 {
					relIn.Key = k.Key
				}
				if _, in := inGap(z); in {
					h.op(client, OpRelease, z-noise(0.5), z+noise(0.5), Fail, relIn, Event{})
					continue
				}
				typ := OK
				if rng.IntN(5) == 0 {
					typ = Info
				}
				h.op(client, OpRelease, z-noise(0.5), z+noise(0.5), typ, relIn, Event{})
				if typ == OK || rng.IntN(2) == 0 {
					refunds = append(refunds, pending{z, g - used, ref})
				}
			}
		}
	}
	// The history arrives in any order.
	rng.Shuffle(len(h.events), func(i, j int) { h.events[i], h.events[j] = h.events[j], h.events[i] })
	return run
}

func requireAllValid(t *testing.T, label string, results []Result) {
	t.Helper()
	for _, r := range results {
		if !r.Valid {
			t.Errorf("%s: %s invalid: %s\n%s", label, r.Name, r.Summary, strings.Join(r.Violations, "\n"))
		}
	}
}

func TestRandomCorrectHistoriesPass(t *testing.T) {
	seeds := uint64(24)
	if testing.Short() {
		seeds = 6
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t.Parallel()
			run := simulate(seed, 10*time.Second)
			results := CheckAll(run.h.events, simKeys, Options{})
			requireAllValid(t, fmt.Sprintf("seed %d", seed), results)
			if seed == 0 {
				for _, r := range results {
					t.Logf("%-13s %s", r.Name, r.Summary)
				}
				for _, k := range simKeys {
					t.Logf("admissions max ratio %-7s %.3f", k.Key, results[1].Metrics["max_ratio:"+k.Key])
				}
			}
			// The run must exercise what it claims to.
			m := func(name, metric string) float64 {
				for _, r := range results {
					if r.Name == name {
						return r.Metrics[metric]
					}
				}
				return 0
			}
			if m("durability", "outages") != 1 || m("availability", "failovers") != 2 || m("admissions", "admitted") == 0 ||
				m("lease-budget", "released") == 0 || m("idempotency", "retried") == 0 || m("history", "incomplete") == 0 {
				t.Errorf("the simulation missed a feature: %v", results)
			}
			if r := m("grants", "max_ratio"); r < 0.9 {
				t.Errorf("grants max ratio %.3f: the simulation never comes near the bound", r)
			}
		})
	}
}

// Each mutation adds one violation to a correct history; the named checker
// must catch it.
func TestRandomHistoriesWithOneViolationFail(t *testing.T) {
	mutations := []struct {
		name, checker string
		mutate        func(run *simRun, rng *rand.Rand)
	}{
		{"a lease spent after it expired", "lease-expiry", func(run *simRun, rng *rand.Rand) {
			l := run.leases[rng.IntN(len(run.leases))]
			at := l.invoke + l.ttl + msec(1)
			run.h.allow(l.client, l.key, at, at+msec(1), l.id, 1)
		}},
		{"a request applied twice", "idempotency", func(run *simRun, rng *rand.Rand) {
			l := run.leases[rng.IntN(len(run.leases))]
			run.h.op(l.client, OpGrant, l.invoke+msec(5), l.invoke+msec(6), OK,
				Event{Key: l.key, N: 1, ClientID: l.client, Seq: l.seq}, Event{Lease: 1 << 40, N: l.granted, TTL: l.ttl})
		}},
		{"a lease spent beyond its grant", "lease-budget", func(run *simRun, rng *rand.Rand) {
			l := run.leases[rng.IntN(len(run.leases))]
			run.h.allow(l.client, l.key, l.invoke+msec(1), l.invoke+msec(2), l.id, l.granted-l.used+1)
		}},
		{"B + r·Λ + 1 admitted at one instant", "admissions", func(run *simRun, rng *rand.Rand) {
			at := rng.Int64N(run.horizon)
			run.h.allow("c1", "bucket", at, at, 0, 50+50+1)
		}},
		{"B + 1 granted at one instant", "grants", func(run *simRun, rng *rand.Rand) {
			at := rng.Int64N(run.horizon)
			run.h.grant("c9", "bucket", 1, at, at, 1<<41, 51, 0)
		}},
		{"L + 1 admitted in one window", "admissions", func(run *simRun, rng *rand.Rand) {
			at := rng.Int64N(run.horizon)
			run.h.allow("c1", "window", at, at, 0, 61)
		}},
	}
	for _, mu := range mutations {
		t.Run(mu.name, func(t *testing.T) {
			for seed := range uint64(5) {
				run := simulate(seed, 6*time.Second)
				mu.mutate(run, rand.New(rand.NewPCG(seed, 9)))
				for _, r := range CheckAll(run.h.events, simKeys, Options{}) {
					if r.Name == mu.checker && r.Valid {
						t.Errorf("seed %d: %s passed: %s", seed, r.Name, r.Summary)
					}
				}
			}
		})
	}
}
