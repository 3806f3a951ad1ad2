//go:build unix

package jepsen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// RunConfig configures a chaos run (Run).
type RunConfig struct {
	// Time is how long the client workload runs; faults happen within it,
	// and the run takes this plus setup, build and checking. Default 60s.
	Time time.Duration
	// Nodes is the cluster size, 1 to 9. Default 3.
	Nodes int
	// Clients is the number of client worker processes, 1 to 32. Default 4.
	Clients int
	// Seed makes the nemesis schedule and the workers' pacing; print it to
	// reproduce a run.
	Seed int64
	// Nemeses are the fault kinds to schedule (see ParseNemeses); empty
	// means none.
	Nemeses []string
	// Dir is the parent of the run's report directory. Default "reports".
	Dir string
	// Leasehold is a prebuilt leasehold binary; "" builds
	// github.com/leasehold/leasehold/cmd/leasehold with -tags chaosclock
	// into the run directory (which needs the go command and a working
	// directory in the module). A binary without the tag cannot take clock
	// faults.
	Leasehold string
	// Worker is the command line that starts a client worker, to which the
	// runner appends WorkerConfig.Args(); its program must call RunWorker.
	// Default: cmd/jepsen built with the clock knob into the run directory,
	// with the argument "worker". A worker without the knob cannot take
	// client clock faults.
	Worker []string
	// Workload is what the workers do; nil means DefaultWorkload(Clients).
	Workload *Workload
	// Insecure runs the nodes and workers in plain text (serve --insecure);
	// by default the nodes serve mutual TLS and each worker presents a
	// client certificate of the run's CA, made in the data directory.
	Insecure bool
	// KeepData keeps the nodes' data directories and the built binary in
	// the run directory; by default they are removed once the run is
	// checked (the logs and histories stay).
	KeepData bool
	// Log receives the runner's messages; nil means os.Stderr.
	Log io.Writer
	// Progress, if set, receives a progress line (elapsed, faults, ops)
	// every half second, redrawn with a carriage return when ProgressTTY is
	// set, else a plain line every 10 seconds.
	Progress    io.Writer
	ProgressTTY bool
}

func (cfg RunConfig) withDefaults() RunConfig {
	if cfg.Time == 0 {
		cfg.Time = 60 * time.Second
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Clients == 0 {
		cfg.Clients = 4
	}
	if cfg.Dir == "" {
		cfg.Dir = "reports"
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Workload == nil {
		w := DefaultWorkload(cfg.Clients)
		cfg.Workload = &w
	}
	return cfg
}

// Validate reports every problem with cfg (after defaults) at once.
func (cfg RunConfig) Validate() error {
	cfg = cfg.withDefaults()
	var errs []error
	if cfg.Time < 5*time.Second || cfg.Time > 24*time.Hour {
		errs = append(errs, fmt.Errorf("time %v: want 5s to 24h", cfg.Time))
	}
	if cfg.Nodes < 1 || cfg.Nodes > 9 {
		errs = append(errs, fmt.Errorf("nodes %d: want 1 to 9", cfg.Nodes))
	}
	if cfg.Clients < 1 || cfg.Clients > 32 {
		errs = append(errs, fmt.Errorf("clients %d: want 1 to 32", cfg.Clients))
	}
	if _, err := ParseNemeses(strings.Join(cfg.Nemeses, ",")); err != nil {
		errs = append(errs, err)
	}
	if err := cfg.Workload.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// KeySpecs returns w's keys as the checkers know them (keys.json): a
// group's keys one by one, each naming its group.
func (w Workload) KeySpecs() []KeySpec {
	var out []KeySpec
	for _, k := range w.Keys {
		if k.Budget != nil {
			out = append(out, k.budgetKeySpecs()...)
			continue
		}
		group := ""
		if k.Keys > 1 {
			group = k.Key
		}
		for _, name := range k.Names() {
			out = append(out, KeySpec{Key: name, Algorithm: k.Algorithm, Limit: k.Rate, Period: k.Per,
				Burst: k.Burst, Strict: k.Strict, MaxLease: k.MaxLease, Light: k.Light, Group: group})
		}
	}
	return out
}

// RunOutcome is what a run found.
type RunOutcome struct {
	// Dir is the run's report directory: history.jsonl, results.json,
	// plot.svg, keys.json, workload.json, run.json and every process's log.
	Dir string
	// Valid: every checker and harness check passed. Unknown: the checkers
	// could not say (not wired in, or the history could not be read).
	Valid, Unknown bool
	// Verdict is the one-line summary, "jepsen: valid seed=..." or
	// "jepsen: invalid ...".
	Verdict string
}

// Run runs one chaos test: it builds the leasehold binary, starts cfg.Nodes
// `leasehold serve` processes on loopback and cfg.Clients worker processes
// that drive the real SDK at several times the keys' limits, applies the
// nemesis schedule drawn from cfg.Seed, stops everything, merges the
// histories into <dir>/history.jsonl, runs the checkers (results.json) and
// draws plot.svg. It stops every process it started before it returns,
// also when ctx ends (an interrupt), in which case it returns ctx's error.
// An error means the run could not be carried out or reported; a run that
// finds a violation returns an outcome with Valid false.
func Run(ctx context.Context, cfg RunConfig) (*RunOutcome, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	kinds, _ := ParseNemeses(strings.Join(cfg.Nemeses, ","))
	name := fmt.Sprintf("%s-seed%d", time.Now().Format("20060102-150405"), cfg.Seed)
	dir, err := filepath.Abs(filepath.Join(cfg.Dir, name))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, dir: dir, name: name, began: time.Now(), worker: cfg.Worker}
	r.sched = ScheduleConfig{Seed: cfg.Seed, Duration: cfg.Time, Nodes: cfg.Nodes, Clients: cfg.Clients,
		Kinds: kinds, Lease: cfg.Workload.maxLease()}.withDefaults()
	r.faults = NewSchedule(r.sched)
	defer r.cleanup()
	return r.run(ctx)
}

// runner is one run in progress.
type runner struct {
	cfg    RunConfig
	dir    string
	name   string
	began  time.Time
	sched  ScheduleConfig
	faults []Fault

	worker   []string // the worker command line (RunConfig.Worker or built)
	cluster  *cluster
	net      *network
	workers  []*proc.Process
	workOps  []atomic.Int64 // per worker, from its progress lines
	workAdm  []atomic.Int64
	nemesis  *nemesis
	slots    *memberSlots // the node slots that are members, and the spares
	nemHist  *eventFile
	cleaned  sync.Once
	logMu    sync.Mutex     // Log and Progress writes
	problems []harnessCheck // harness checks failed; appended by Run's goroutine only
}

func (r *runner) logf(format string, args ...any) {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	fmt.Fprintf(r.cfg.Log, "jepsen: "+format+"\n", args...)
}

func (r *runner) path(name string) string { return filepath.Join(r.dir, name) }

func (r *runner) run(ctx context.Context) (*RunOutcome, error) {
	cfg := r.cfg
	r.logf("seed=%d nodes=%d clients=%d time=%v nemesis=%s tls=%v dir=%s", cfg.Seed, cfg.Nodes, cfg.Clients, cfg.Time,
		strings.Join(r.sched.Kinds, ","), !cfg.Insecure, r.dir)
	for _, f := range r.faults {
		r.logf("schedule: %v", f)
	}

	bin := cfg.Leasehold
	if bin == "" {
		bin = r.path("leasehold")
		if err := r.build(ctx, bin, "github.com/leasehold/leasehold/cmd/leasehold"); err != nil {
			return nil, err
		}
	}
	if r.worker == nil {
		if err := r.build(ctx, r.path("jepsen-worker"), "github.com/leasehold/leasehold/cmd/jepsen"); err != nil {
			return nil, err
		}
		r.worker = []string{r.path("jepsen-worker"), "worker"}
	}

	wl := *cfg.Workload
	if err := writeJSON(r.path("workload.json"), wl); err != nil {
		return nil, err
	}
	keys := wl.KeySpecs()
	if err := writeFile(r.path("keys.json"), func(w io.Writer) error { return WriteKeys(w, keys) }); err != nil {
		return nil, err
	}

	r.net = &network{}
	cl, err := newCluster(r.dir, bin, cfg.Nodes, "info", r.net, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	r.cluster = cl
	var initial, spares []string
	for i, nd := range cl.Nodes() {
		if i < cfg.Nodes {
			initial = append(initial, nd.ID())
			if err := nd.Start(); err != nil {
				return nil, err
			}
		} else {
			spares = append(spares, nd.ID())
		}
	}
	r.slots = newMemberSlots(initial, spares)
	leader, err := cl.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("start the cluster: %w (see %s/n*.log)", err, r.dir)
	}
	r.logf("cluster up: leader %s, endpoints %s", leader, strings.Join(cl.Endpoints(), ","))
	if err := writeJSON(r.path("run.json"), r.info()); err != nil {
		return nil, err
	}

	if r.nemHist, err = createEventFile(r.path("history-nemesis.jsonl"), ProcessNemesis); err != nil {
		return nil, err
	}
	r.workOps = make([]atomic.Int64, cfg.Clients)
	r.workAdm = make([]atomic.Int64, cfg.Clients)
	var histories []string
	for i := range cfg.Clients {
		name := fmt.Sprintf("c%d", i+1)
		var endpoints []string // the client reaches each node through its own link
		for _, nd := range cl.Nodes() {
			l, err := r.net.add(name, nd.ID(), nd.ClientAddr())
			if err != nil {
				return nil, err
			}
			endpoints = append(endpoints, l.addr())
		}
		wc := WorkerConfig{
			Name:      name,
			Endpoints: endpoints,
			Workload:  r.path("workload.json"),
			History:   r.path(fmt.Sprintf("history-c%d.jsonl", i+1)),
			Seed:      cfg.Seed*1000 + int64(i+1),
			Duration:  cfg.Time,
		}
		if certs := cl.Certs(); certs != nil {
			f, err := certs.Client(name)
			if err != nil {
				return nil, err
			}
			wc.TLS = &f
		}
		histories = append(histories, wc.History)
		opts, err := withClockKnob(proc.Options{Log: r.path(wc.Name + ".log"), MayFinish: true,
			Stdout: func(line string) { r.parseProgress(i, line) }}, clockPath(r.dir, wc.Name))
		if err != nil {
			return nil, err
		}
		r.workers = append(r.workers, proc.New(wc.Name, r.worker[0], append(append([]string{}, r.worker[1:]...), wc.Args()...), opts))
	}
	histories = append(histories, r.nemHist.path())

	start := time.Now()
	for _, p := range r.workers {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	r.nemesis = &nemesis{cluster: cl, clients: r.workers, dir: r.dir, net: r.net, hist: r.nemHist, logf: r.logfAbove, ms: r.slots}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var bg sync.WaitGroup
	bg.Go(func() {
		r.nemesis.run(runCtx, start, r.faults, start.Add(cfg.Time-r.sched.Quiet/2))
	})
	bg.Go(func() { r.progress(runCtx, start) })

	// The workers stop by themselves after cfg.Time; give them time to
	// close their clients (releases) and flush.
	waitCtx, cancel := context.WithTimeout(ctx, cfg.Time+45*time.Second)
	for _, p := range r.workers {
		if err := p.Wait(waitCtx); err != nil {
			if ctx.Err() != nil {
				cancel()
				return nil, ctx.Err()
			}
			r.fail("workers", "%s: %v", p.Name(), err)
		}
	}
	cancel()
	for _, p := range r.workers {
		if p.Running() { // timed out above: stop it before its history is read
			_ = p.Stop(3 * time.Second)
		}
	}
	stopRun()
	bg.Wait()
	r.clearProgress()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.harnessChecksAtEnd()
	_ = r.cluster.StopAll(10 * time.Second)
	if err := r.nemHist.close(); err != nil {
		return nil, err
	}
	return r.report(ctx, histories, keys)
}

// build builds pkg into out with the chaos clock knob (-tags chaosclock),
// which the clock nemeses need in nodes and workers alike.
func (r *runner) build(ctx context.Context, out, pkg string) error {
	t := time.Now()
	if err := proc.Build(ctx, out, pkg, "chaosclock"); err != nil {
		return err
	}
	r.logf("built %s (with the clock knob) in %v", filepath.Base(out), time.Since(t).Round(time.Millisecond))
	return nil
}

// logfAbove logs a message without tearing the progress line.
func (r *runner) logfAbove(format string, args ...any) {
	r.clearProgress()
	r.logf(format, args...)
}

// parseProgress reads a worker's "ops=N admitted=M" line.
func (r *runner) parseProgress(i int, line string) {
	for f := range strings.FieldsSeq(line) {
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			continue
		}
		switch k {
		case "ops":
			r.workOps[i].Store(n)
		case "admitted":
			r.workAdm[i].Store(n)
		}
	}
}

func (r *runner) ops() (ops, admitted int64) {
	for i := range r.workOps {
		ops += r.workOps[i].Load()
		admitted += r.workAdm[i].Load()
	}
	return ops, admitted
}

// progress shows elapsed time, faults and ops until ctx ends.
func (r *runner) progress(ctx context.Context, start time.Time) {
	if r.cfg.Progress == nil {
		return
	}
	every := 10 * time.Second
	if r.cfg.ProgressTTY {
		every = 500 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ops, adm := r.ops()
		elapsed := min(time.Since(start), r.cfg.Time)
		width := 20
		done := int(float64(width) * elapsed.Seconds() / r.cfg.Time.Seconds())
		bar := strings.Repeat("=", done) + strings.Repeat(" ", width-done)
		line := fmt.Sprintf("[%s] %3.0fs/%.0fs faults %d/%d ops %d admitted %d", bar, elapsed.Seconds(), r.cfg.Time.Seconds(),
			r.nemesis.started.Load(), len(r.faults), ops, adm)
		r.logMu.Lock()
		if r.cfg.ProgressTTY {
			fmt.Fprintf(r.cfg.Progress, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(r.cfg.Progress, "jepsen: "+line)
		}
		r.logMu.Unlock()
	}
}

func (r *runner) clearProgress() {
	if r.cfg.Progress != nil && r.cfg.ProgressTTY {
		r.logMu.Lock()
		fmt.Fprint(r.cfg.Progress, "\r\033[K")
		r.logMu.Unlock()
	}
}

// cleanup stops every process the run started, by PID: workers first (so
// they flush their histories), then the nodes. It runs on every return
// from Run, interrupts included.
func (r *runner) cleanup() {
	r.cleaned.Do(func() {
		var wg sync.WaitGroup
		for _, p := range r.workers {
			wg.Go(func() { _ = p.Stop(3 * time.Second) })
		}
		wg.Wait()
		if r.cluster != nil {
			_ = r.cluster.StopAll(5 * time.Second)
			_ = r.cluster.Close()
		}
		if r.net != nil {
			r.net.close()
		}
		if r.nemHist != nil {
			_ = r.nemHist.close()
		}
		if !r.cfg.KeepData {
			_ = os.RemoveAll(r.path("data"))
			if r.cfg.Leasehold == "" {
				_ = os.Remove(r.path("leasehold"))
			}
			if r.cfg.Worker == nil {
				_ = os.Remove(r.path("jepsen-worker"))
			}
		}
	})
}

// harnessCheck is one of the runner's own checks: not of the system's
// guarantees (the checkers do that) but that the run itself did what it
// claims — every fault healed, no process died on its own, every worker
// finished and was traced.
type harnessCheck struct {
	Name    string `json:"name"`
	Valid   bool   `json:"valid"`
	Summary string `json:"summary"`
}

// fail records a failed harness check.
func (r *runner) fail(name, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.problems = append(r.problems, harnessCheck{Name: name, Summary: msg})
	r.logfAbove("harness check %s failed: %s", name, msg)
}

// harnessChecksAtEnd checks, before the nodes are stopped, that every fault
// was healed and that no process died without the nemesis killing it.
func (r *runner) harnessChecksAtEnd() {
	if s, h := r.nemesis.started.Load(), r.nemesis.healed.Load(); s != h {
		r.fail("healed", "%d faults begun, %d healed", s, h)
	}
	for _, msg := range r.nemesis.failures() {
		r.fail("faults", "a nemesis step did not work, so the run did not test what it says: %s", msg)
	}
	procs := append([]*proc.Process(nil), r.workers...)
	members := r.slots.list()
	if err := r.nemesis.waitVoters(30 * time.Second); err != nil {
		r.fail("membership", "the Raft configuration does not end with the expected voters: %v", err)
	}
	for _, nd := range r.cluster.Nodes() {
		if !slices.Contains(members, nd.ID()) {
			procs = append(procs, nd.Process)
			continue
		}
		if !nd.Running() {
			r.fail("healed", "node %s is not running at the end", nd.ID())
		}
		if nd.Paused() {
			r.fail("healed", "node %s is still paused at the end", nd.ID())
		}
		procs = append(procs, nd.Process)
	}
	for _, p := range procs {
		for _, e := range p.UnexpectedExits() {
			r.fail("crashes", "%s", e)
		}
	}
}

// runInfo is run.json: how the run was set up, to reproduce it.
type runInfo struct {
	Run       string         `json:"run"`
	Seed      int64          `json:"seed"`
	Time      time.Duration  `json:"time_ns"`
	Nodes     int            `json:"nodes"`
	Clients   int            `json:"clients"`
	Nemeses   []string       `json:"nemeses"`
	TLS       bool           `json:"tls"`
	Warmup    time.Duration  `json:"warmup_ns"`
	Quiet     time.Duration  `json:"quiet_ns"`
	Schedule  []Fault        `json:"schedule"`
	Endpoints []string       `json:"endpoints,omitempty"`
	PIDs      map[string]int `json:"pids,omitempty"`
	Command   []string       `json:"command"`
}

func (r *runner) info() runInfo {
	info := runInfo{Run: r.name, Seed: r.cfg.Seed, Time: r.cfg.Time, Nodes: r.cfg.Nodes, Clients: r.cfg.Clients,
		Nemeses: r.sched.Kinds, TLS: !r.cfg.Insecure, Warmup: r.sched.Warmup, Quiet: r.sched.Quiet, Schedule: r.faults, Command: os.Args,
		PIDs: map[string]int{}}
	if r.cluster != nil {
		info.Endpoints = r.cluster.Endpoints()
		for _, nd := range r.cluster.Nodes() {
			info.PIDs[nd.ID()] = nd.PID()
		}
	}
	if info.Schedule == nil {
		info.Schedule = []Fault{}
	}
	return info
}

// runResults is results.json.
type runResults struct {
	Run      string         `json:"run"`
	Seed     int64          `json:"seed"`
	Valid    bool           `json:"valid"`
	Unknown  bool           `json:"unknown,omitempty"`
	Verdict  string         `json:"verdict"`
	Ops      int64          `json:"ops"`
	Admitted int64          `json:"admitted"`
	Events   int            `json:"events"`
	Faults   int64          `json:"faults"`
	Elapsed  time.Duration  `json:"elapsed_ns"`
	Harness  []harnessCheck `json:"harness"`
	Checks   []checkSummary `json:"checks"`
	// Results are the checkers' own results, as they report them.
	Results any `json:"results"`
}

// report merges the histories, runs the checkers and writes the report.
func (r *runner) report(ctx context.Context, histories []string, keys []KeySpec) (*RunOutcome, error) {
	f, err := os.Create(r.path("history.jsonl"))
	if err != nil {
		return nil, err
	}
	events, mergeErr := MergeHistories(histories, f)
	if err := f.Close(); err != nil && mergeErr == nil {
		mergeErr = err
	}
	if mergeErr != nil {
		r.fail("history", "%v", mergeErr)
	}
	if mergeErr == nil {
		for _, h := range histories {
			_ = os.Remove(h) // merged into history.jsonl
		}
	}
	r.historyChecks(events)

	var ops, admitted int64
	for _, e := range events {
		if e.Op == OpAllow && e.Type != Invoke {
			ops++
			if e.Type == OK {
				admitted++
			}
		}
	}
	// The nodes the run started with; the history's joins and leaves say
	// how the members changed.
	var nodes []string
	for _, nd := range r.cluster.Nodes()[:r.cfg.Nodes] {
		nodes = append(nodes, nd.ID())
	}
	check := checkHistory(ctx, events, keys, nodes)
	res := runResults{Run: r.name, Seed: r.cfg.Seed, Ops: ops, Admitted: admitted, Events: len(events),
		Faults: r.nemesis.started.Load(), Elapsed: time.Since(r.began), Checks: check.Summaries, Results: check.Results}
	res.Harness = []harnessCheck{{Name: "harness", Valid: len(r.problems) == 0,
		Summary: "every fault applied and healed, no process crashed, every worker finished and was traced"}}
	res.Harness = append(res.Harness, r.problems...)
	res.Valid = check.Available && check.Valid && len(r.problems) == 0
	res.Unknown = !check.Available && len(r.problems) == 0
	if res.Checks == nil {
		res.Checks = []checkSummary{}
	}

	if err := writeFile(r.path("plot.svg"), func(w io.Writer) error {
		events, keys := plotGroups(events, keys)
		return WritePlot(w, events, keys, "leasehold chaos run "+r.name,
			fmt.Sprintf("%d nodes, %d clients, %v, seed %d, nemesis %s", r.cfg.Nodes, r.cfg.Clients, r.cfg.Time,
				r.cfg.Seed, strings.Join(r.sched.Kinds, ",")))
	}); err != nil {
		return nil, err
	}

	word := "invalid"
	switch {
	case res.Valid:
		word = "valid"
	case res.Unknown:
		word = "unknown"
	}
	var groups string
	for _, g := range slices.Sorted(maps.Keys(check.GroupEfficiency)) {
		groups += fmt.Sprintf(" efficiency:%s=%.2f", g, check.GroupEfficiency[g])
	}
	res.Verdict = fmt.Sprintf("jepsen: %s seed=%d ops=%d admitted=%d faults=%d over-admitted=%s efficiency=%s%s failover-p50=%s elapsed=%v dir=%s",
		word, r.cfg.Seed, ops, admitted, res.Faults, fmtMetric(check.OverAdmitted, "%.0f"), fmtMetric(check.Efficiency, "%.2f"),
		groups, fmtDuration(check.FailoverP50), res.Elapsed.Round(time.Second), r.dir)
	if err := writeJSON(r.path("results.json"), res); err != nil {
		return nil, err
	}
	for _, c := range check.Summaries {
		mark := "ok  "
		if !c.Valid {
			mark = "FAIL"
		}
		r.logf("check %s %s: %s", mark, c.Name, c.Summary)
	}
	return &RunOutcome{Dir: r.dir, Valid: res.Valid, Unknown: res.Unknown, Verdict: res.Verdict}, nil
}

// historyChecks checks that every worker left a history and that every
// admission was traced.
func (r *runner) historyChecks(events []Event) {
	seen := map[string]int{}
	untraced := 0
	for _, e := range events {
		seen[e.Process]++
		if e.Op == OpAllow && e.Type == OK && e.Value == "untraced" {
			untraced++
		}
	}
	for _, p := range r.workers {
		if seen[p.Name()] == 0 {
			r.fail("history", "worker %s recorded no events", p.Name())
		}
	}
	if untraced > 0 {
		r.fail("history", "%d admissions the SDK's trace did not report", untraced)
	}
}

func fmtMetric(v float64, format string) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf(format, v)
}

func fmtDuration(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return d.Round(time.Millisecond).String()
}

// writeFile creates path and writes it with fn.
func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WorkerMain is the body of a worker process (`jepsen worker ...`): it
// parses args, runs the worker until its duration passes or ctx ends, and
// returns the process's exit code. Progress goes to stdout, logs to stderr.
func WorkerMain(ctx context.Context, args []string) int {
	cfg, err := ParseWorkerArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen worker:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := RunWorker(ctx, cfg, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen worker:", err)
		return 1
	}
	return 0
}

// plotGroups returns events and keys for the plot with every group of keys
// drawn as one panel: the group's admissions and grants summed under its
// name, against the sum of its keys' limits; a Budget rule's reservations
// are drawn as its admissions (their estimates). events is not changed.
func plotGroups(events []Event, keys []KeySpec) ([]Event, []KeySpec) {
	group := map[string]string{}
	var out []KeySpec
	at := map[string]int{}
	for _, k := range keys {
		if k.Group == "" {
			out = append(out, k)
			continue
		}
		group[k.Key] = k.Group
		if i, ok := at[k.Group]; ok {
			// Same limit each: the group's is the sum (per Period).
			out[i].Limit += k.Limit
			out[i].Burst += k.Normalize().Burst
			continue
		}
		at[k.Group] = len(out)
		g := k.Normalize()
		g.Key, g.Group = k.Group, ""
		out = append(out, g)
	}
	mapped := make([]Event, len(events))
	for i, e := range events {
		if g, ok := group[e.Key]; ok {
			e.Key = g
		}
		if e.Op == OpReserve {
			e.Op = OpAllow
		}
		mapped[i] = e
	}
	return mapped, out
}
