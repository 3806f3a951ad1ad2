package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Fault kinds: what a nemesis does to the processes of a run. Each is
// followed by its heal (restart or resume) before the next one starts.
const (
	KillNode     = "kill-node"     // kill -9 one node, then restart it
	KillLeader   = "kill-leader"   // kill -9 the leader, then restart it
	KillMinority = "kill-minority" // kill -9 a minority of the nodes, then restart them
	KillAll      = "kill-all"      // kill -9 every node, then restart them all (durability)
	PauseNode    = "pause-node"    // SIGSTOP one node for longer than a lease, then SIGCONT
	PauseLeader  = "pause-leader"  // SIGSTOP the leader for longer than a lease, then SIGCONT
	PauseClient  = "pause-client"  // SIGSTOP a client worker for longer than a lease, then SIGCONT
)

// nemesisGroups are the names --nemesis accepts for a set of fault kinds.
var nemesisGroups = []struct {
	name  string
	kinds []string
}{
	{"kill", []string{KillNode, KillLeader, KillMinority, KillAll}},
	{"pause", []string{PauseNode, PauseLeader, PauseClient}},
}

// ParseNemeses expands a comma-separated --nemesis list of groups ("kill",
// "pause") and fault kinds ("kill-all", ...) into fault kinds, each once, in
// a fixed order. "none" or "" means no faults.
func ParseNemeses(list string) ([]string, error) {
	var all []string
	for _, g := range nemesisGroups {
		all = append(all, g.kinds...)
	}
	want := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "" || name == "none":
			continue
		case name == "partition" || name == "clock":
			return nil, fmt.Errorf("nemesis %q: not implemented yet (kill and pause are)", name)
		case slices.Contains(all, name):
			want[name] = true
			continue
		}
		found := false
		for _, g := range nemesisGroups {
			if g.name == name {
				found = true
				for _, k := range g.kinds {
					want[k] = true
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown nemesis %q; want a group (kill, pause) or one of %s", name, strings.Join(all, ", "))
		}
	}
	var kinds []string
	for _, k := range all {
		if want[k] {
			kinds = append(kinds, k)
		}
	}
	return kinds, nil
}

// A Fault is one step of a nemesis schedule.
type Fault struct {
	Kind string `json:"kind"`
	// At is when the fault starts, from the start of the workload.
	At time.Duration `json:"at_ns"`
	// For is how long its targets stay killed or paused before the heal.
	For time.Duration `json:"for_ns"`
	// Targets are the nodes (n1..) or clients (c1..) the schedule chose;
	// empty for KillLeader and PauseLeader, whose target is whichever node
	// leads when the fault starts.
	Targets []string `json:"targets,omitempty"`
}

func (f Fault) String() string {
	t := strings.Join(f.Targets, ",")
	if t == "" {
		t = "leader"
	}
	return fmt.Sprintf("%v %s %s for %v", f.At.Round(10*time.Millisecond), f.Kind, t, f.For.Round(10*time.Millisecond))
}

// ScheduleConfig shapes a nemesis schedule.
type ScheduleConfig struct {
	// Seed makes the schedule: the same config gives the same schedule.
	Seed int64
	// Duration is the workload's length.
	Duration time.Duration
	// Nodes and Clients are how many of each the run has (n1.., c1..).
	Nodes, Clients int
	// Kinds are the fault kinds to draw from (see ParseNemeses).
	Kinds []string
	// Warmup is how long the workload runs before the first fault; 0
	// means Duration/10, within [1s, 5s].
	Warmup time.Duration
	// Quiet is how long the workload runs after the last heal; 0 means
	// Duration/6, within [2s, 10s].
	Quiet time.Duration
	// Lease is the longest lease of the run's keys: a pause lasts 1–2s
	// longer, so the paused process wakes up to expired leases. 0 means 2s.
	Lease time.Duration
}

// withDefaults returns cfg with its zero durations set to their defaults.
func (cfg ScheduleConfig) withDefaults() ScheduleConfig {
	if cfg.Warmup <= 0 {
		cfg.Warmup = min(max(cfg.Duration/10, time.Second), 5*time.Second)
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = min(max(cfg.Duration/6, 2*time.Second), 10*time.Second)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 2 * time.Second
	}
	return cfg
}

// maxFaults bounds a schedule's length whatever its duration.
const maxFaults = 1000

// NewSchedule returns the faults of a run: drawn in turn from a shuffled
// cycle of cfg.Kinds (so every kind comes up once before any repeats), each
// lasting long enough to matter and followed by a gap long enough for the
// cluster to recover, all of them healed before the final quiet period.
// It is a pure function of cfg.
func NewSchedule(cfg ScheduleConfig) []Fault {
	cfg = cfg.withDefaults()
	warmup, quiet, lease := cfg.Warmup, cfg.Quiet, cfg.Lease
	var kinds []string
	for _, k := range cfg.Kinds {
		switch {
		case k == PauseClient && cfg.Clients < 1:
		case k == KillMinority && cfg.Nodes < 3:
		case cfg.Nodes < 1 && k != PauseClient:
		default:
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6a657073656e)) // "jepsen"
	// between returns a random duration in [lo, hi], in steps of 10ms.
	between := func(lo, hi time.Duration) time.Duration {
		steps := int64((hi - lo) / (10 * time.Millisecond))
		return lo + time.Duration(rng.Int64N(steps+1))*10*time.Millisecond
	}
	nodes := func(k int) []string {
		var out []string
		for _, i := range rng.Perm(cfg.Nodes)[:k] {
			out = append(out, fmt.Sprintf("n%d", i+1))
		}
		slices.Sort(out)
		return out
	}
	order := slices.Clone(kinds)
	var faults []Fault
	end := cfg.Duration - quiet
	t := warmup
	for i := 0; len(faults) < maxFaults; i++ {
		if i%len(order) == 0 {
			rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		}
		f := Fault{Kind: order[i%len(order)], At: t}
		gap := between(4*time.Second, 6*time.Second)
		switch f.Kind {
		case KillNode:
			f.For, f.Targets = between(time.Second, 2500*time.Millisecond), nodes(1)
		case KillLeader:
			f.For = between(time.Second, 2500*time.Millisecond)
		case KillMinority:
			f.For, f.Targets = between(time.Second, 2500*time.Millisecond), nodes((cfg.Nodes-1)/2)
		case KillAll:
			f.For, f.Targets = between(time.Second, 2*time.Second), nodes(cfg.Nodes)
			gap = between(6*time.Second, 8*time.Second)
		case PauseNode:
			f.For, f.Targets = lease+between(time.Second, 2*time.Second), nodes(1)
		case PauseLeader:
			f.For = lease + between(time.Second, 2*time.Second)
		case PauseClient:
			f.For = lease + between(time.Second, 2*time.Second)
			f.Targets = []string{fmt.Sprintf("c%d", rng.IntN(cfg.Clients)+1)}
		}
		if t+f.For > end {
			break
		}
		faults = append(faults, f)
		t += f.For + gap
	}
	return faults
}

// nemesis carries out a schedule against a run's processes and records each
// step in its history (Process "nemesis"): kill, restart, pause and resume,
// invoke then ok (info if a step failed), Value naming the targets, the
// leader first with a "leader:" prefix if one of them led when the fault
// began.
type nemesis struct {
	cluster *cluster
	clients []*proc
	hist    *eventFile
	logf    func(format string, args ...any)
	started atomic.Int64 // faults begun
	healed  atomic.Int64 // faults healed
}

// run carries out faults, timed from start, until they are done or ctx ends;
// a fault that would not be healed by healBy is skipped. Unless ctx ends
// (then the runner's cleanup stops every process), every fault it began is
// healed before it returns.
func (n *nemesis) run(ctx context.Context, start time.Time, faults []Fault, healBy time.Time) {
	for _, f := range faults {
		if err := sleepUntil(ctx, start.Add(f.At)); err != nil {
			return
		}
		if time.Now().Add(f.For).After(healBy) {
			n.logf("nemesis: skip %v: it would not heal before the quiet period", f)
			continue
		}
		targets, label := n.resolve(ctx, f)
		if len(targets) == 0 {
			n.logf("nemesis: skip %v: no target (no leader?)", f)
			continue
		}
		n.started.Add(1)
		n.apply(f.Kind, targets, label)
		if err := sleepUntil(ctx, time.Now().Add(f.For)); err != nil {
			return // interrupted: the runner's cleanup stops every process
		}
		n.heal(f.Kind, targets, label)
		n.healed.Add(1)
		// Let the cluster elect a leader before the next fault, so that
		// faults test recovery one at a time.
		if _, err := n.cluster.waitLeader(ctx, 20*time.Second); err != nil && ctx.Err() == nil {
			n.logf("nemesis: after healing %v: %v", f, err)
		}
	}
}

// resolve names a fault's target processes, and its history label.
func (n *nemesis) resolve(ctx context.Context, f Fault) ([]*proc, string) {
	if f.Kind == PauseClient {
		var out []*proc
		for _, c := range n.clients {
			if slices.Contains(f.Targets, c.name) {
				out = append(out, c)
			}
		}
		return out, strings.Join(f.Targets, ",")
	}
	leader := n.cluster.leader(ctx)
	ids := f.Targets
	if f.Kind == KillLeader || f.Kind == PauseLeader {
		if leader == "" {
			leader, _ = n.cluster.waitLeader(ctx, 5*time.Second)
		}
		if leader == "" {
			return nil, ""
		}
		ids = []string{leader}
	}
	var out []*proc
	var labels []string
	for _, id := range ids {
		nd := n.cluster.node(id)
		if nd == nil {
			continue
		}
		if id == leader {
			out = append([]*proc{nd.proc}, out...)
			labels = append([]string{LeaderPrefix + id}, labels...)
		} else {
			out = append(out, nd.proc)
			labels = append(labels, id)
		}
	}
	return out, strings.Join(labels, ",")
}

// apply kills or pauses targets.
func (n *nemesis) apply(kind string, targets []*proc, label string) {
	op := OpPause
	if strings.HasPrefix(kind, "kill") {
		op = OpKill
	}
	n.step(op, label, targets, func(p *proc) error {
		if op == OpKill {
			return p.kill(10 * time.Second)
		}
		return p.pause()
	})
}

// heal restarts or resumes targets.
func (n *nemesis) heal(kind string, targets []*proc, label string) {
	if !strings.HasPrefix(kind, "kill") {
		n.step(OpResume, label, targets, (*proc).resume)
		return
	}
	n.step(OpRestart, label, targets, func(p *proc) error {
		var err error
		for range 10 { // bounded: a port may take a moment to be free again
			if err = p.start(); err == nil {
				return nil
			}
			time.Sleep(500 * time.Millisecond)
		}
		return err
	})
}

// step records op's invoke, applies fn to every target, and records ok, or
// info with the errors if any target failed.
func (n *nemesis) step(op, label string, targets []*proc, fn func(*proc) error) {
	id := n.hist.newID()
	n.hist.record(Event{Type: Invoke, Op: op, ID: id, Value: label})
	var errs []string
	for _, p := range targets {
		if err := fn(p); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		n.hist.record(Event{Type: Info, Op: op, ID: id, Value: label + ": " + strings.Join(errs, "; ")})
		n.logf("nemesis: %s %s: %s", op, label, strings.Join(errs, "; "))
		return
	}
	n.hist.record(Event{Type: OK, Op: op, ID: id, Value: label})
	n.logf("nemesis: %s %s", op, label)
}

// sleepUntil waits until t or until ctx ends (returning its error).
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
