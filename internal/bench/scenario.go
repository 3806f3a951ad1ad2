package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/bench/redislua"
	"github.com/leasehold/leasehold/internal/proc"
)

// Workload is what every scenario runs: Clients simulated processes, each
// with Concurrency goroutines, calling Allow on Keys token buckets of Rate
// per Per with Burst, for Duration: in a closed loop (Demand 0), far above
// the limit, so the limiter decides (mostly "no") as fast as it can; or
// paced so that each key is asked Demand times its limit.
type Workload struct {
	Clients int
	// Concurrency is the goroutines per client process calling Allow at
	// once: they share the process's SDK Client (and its Limiters), or
	// each has its own Redis connection, as a pool would. 0 means 1.
	Concurrency int
	Keys        int
	Duration    time.Duration
	Rate        int64
	Per         time.Duration
	Burst       int64
	// Demand paces every goroutine so that each key's total demand is
	// Demand times its limit (Rate per Per): each goroutine calls once per
	// Interval(), cycling over the keys as in the closed loop. A goroutine
	// whose calls take longer than that falls behind, and the demand
	// reached is lower (Report.DemandReached). 0: closed loop.
	Demand float64
	// Window makes the keys sliding windows of Rate per window Per,
	// counted in Slots sub-windows (0: the default 10), leased for at most
	// MaxLease (0: the cluster's default, 2s); Burst is then unused.
	Window   bool
	Slots    int
	MaxLease time.Duration
}

// Interval returns how often each goroutine calls for w's Demand: the
// goroutines together make Demand·Rate·Keys calls per Per. 0 for a closed
// loop.
func (w Workload) Interval() time.Duration {
	if w.Demand <= 0 {
		return 0
	}
	perCall := float64(w.Per) / (w.Demand * float64(w.Rate) * float64(w.Keys)) // ns between calls, all goroutines together
	return max(1, time.Duration(perCall*float64(w.workers())))
}

// record reports whether a run of w records every call for the spurious
// count: paced runs and runs over several keys do; a closed loop on a hot
// key measures the fast path, where two clock reads per call would cost as
// much as the call, and would pass MaxRecorded in a second anyway.
// A sliding window's runs always record: its bound is checked on the calls.
func (w Workload) record() bool { return w.Demand > 0 || w.Keys > 1 || w.Window }

// config returns the run configuration of w with the given latency
// sampling stride.
func (w Workload) config(sampleEvery int) Config {
	return Config{Clients: w.workers(), Keys: w.Keys, Duration: w.Duration, SampleEvery: sampleEvery,
		Interval: w.Interval(), Record: w.record()}
}

// Validate reports every problem with w at once.
func (w Workload) Validate() error {
	var errs []error
	if err := (Config{Clients: w.Clients, Keys: w.Keys, Duration: w.Duration, SampleEvery: 1}).Validate(); err != nil {
		errs = append(errs, err)
	}
	if w.Concurrency < 0 || w.Concurrency > maxConcurrency {
		errs = append(errs, fmt.Errorf("concurrency %d: want 1 to %d goroutines per client (0 means 1)", w.Concurrency, maxConcurrency))
	}
	if w.Rate <= 0 || w.Burst <= 0 && !w.Window || w.Per <= 0 {
		errs = append(errs, fmt.Errorf("rate %d, burst %d and per %v must be positive", w.Rate, w.Burst, w.Per))
	}
	if w.Window && (w.Slots < 0 || w.Slots > 64 || w.MaxLease < 0 || w.Per < time.Microsecond) {
		errs = append(errs, fmt.Errorf("sliding window: slots %d must be 0 to 64, max lease %v not negative, window %v at least 1µs",
			w.Slots, w.MaxLease, w.Per))
	}
	if !(w.Demand >= 0 && w.Demand <= 1e6) { // also rejects NaN
		errs = append(errs, fmt.Errorf("demand %v: want 0 (closed loop) or a multiple of the limit up to 1e6", w.Demand))
	}
	return errors.Join(errs...)
}

// maxConcurrency bounds Workload.Concurrency: each Redis worker is a
// connection.
const maxConcurrency = 4096

// PerClient returns the goroutines each client runs: Concurrency, or 1 if unset.
func (w Workload) PerClient() int { return max(1, w.Concurrency) }

// workers returns the number of goroutines w runs.
func (w Workload) workers() int { return w.Clients * w.PerClient() }

// spread returns one Decider per worker: each client's Decider for each of
// its goroutines, client by client.
func (w Workload) spread(perClient []Decider) []Decider {
	out := make([]Decider, 0, w.workers())
	for _, d := range perClient {
		for range w.PerClient() {
			out = append(out, d)
		}
	}
	return out
}

// Report is one scenario's outcome.
type Report struct {
	Name     string // e.g. "leasehold lease", "redis+lua ±2s skew"
	Workload Workload
	Result
	Envelope Envelope
	// Allowed is the envelope summed over the keys: each key may admit
	// Envelope.Allowed(Elapsed).
	Allowed int64
	// Over is the tokens admitted above the envelope, summed over the keys
	// that exceeded theirs; 0 means the limit held.
	Over int64
	// SampleEvery is the latency sampling stride (1: every call timed).
	SampleEvery int
	// Ideal is B + r·Δ summed over the keys: what a limit with no leases
	// could admit at most; Admitted/Ideal is how much of the limit a
	// saturated run used.
	Ideal int64
	// Spurious is the denials the limit did not require
	// (Envelope.Spurious), if Counted.
	Spurious int64
	Counted  bool
	// NotCounted says why Spurious was not counted, if it was not.
	NotCounted string
	// Window is a sliding window's bound, nil for a token bucket; then
	// Envelope is unused, Allowed and Ideal are L + L·Δ/W per key, Over is
	// the tokens by which the fullest window of each key passed L, and
	// WorstWindow the most admitted in one window of any key.
	Window      *WindowEnvelope
	WorstWindow int64
	Shares      WindowShares

	// Leasehold only.
	Leasehold   bool
	RaftEntries int64 // leader commit index after − before
	CommitFrom  uint64
	CommitTo    uint64
	SDK         SDKCounts
	States      map[client.State]int // Limiters by state when the run ended
	Scrapes     int64                // gathers of the SDK's collectors (Hooks.Scrape)
	Notes       []string             // anything that makes the numbers suspect
}

// fullAdvice is what a run the cluster refused as full should say.
const fullAdvice = "it holds its --max-keys keys or --max-sessions clients: bench fewer --keys or --clients, " +
	"or raise the caps on every node"

// NotValid returns why r's figures are not Leasehold's, "" if they are: in
// a Leasehold run where the SDK's failure policy decided any call (the
// cluster did not answer, and the SDK admitted or refused locally, in
// nanoseconds, by its policy), the decisions/s, the latency and what was
// admitted measure that policy, not leases or the cluster's decisions.
// One such call is enough: a run is read as a whole, and nobody can tell
// from its medians which calls the cluster decided.
func (r Report) NotValid() string {
	d := r.SDK.Decided
	if !r.Leasehold || d.Fallback() == 0 {
		return ""
	}
	var why string
	switch failed, full := r.SDK.AcquireFailed, r.SDK.AcquireFull; {
	case full > 0 && failed > 0:
		why = fmt.Sprintf("while the cluster did not answer (%d acquires) and was full (%d acquires refused; %s)",
			failed, full, fullAdvice)
	case full > 0:
		why = "while the cluster was full (" + fullAdvice + ")"
	default:
		why = "while the cluster did not answer"
	}
	return fmt.Sprintf("the failure policy decided %d of %d calls (%d admitted, %d refused) %s: "+
		"these are not Leasehold's figures", d.Fallback(), r.Decisions, d.FallbackAdmitted, d.FallbackDenied, why)
}

// CheckValid returns an error naming the reports that are not valid
// (Report.NotValid), nil if none.
func CheckValid(reports []Report) error {
	var errs []error
	for _, r := range reports {
		if why := r.NotValid(); why != "" {
			errs = append(errs, fmt.Errorf("%s: not valid: %s", r.Name, why))
		}
	}
	return errors.Join(errs...)
}

// notValidMark ends a table row's name when the run is not valid.
const notValidMark = " [NOT VALID: failure policy decided]"

// tableName returns name, r's name in a table, marked if r is not valid,
// and figure, which formats one of its figures: as it is, or "-" for a run
// that is not valid, so that no table shows a figure of one.
func (r Report) tableName(name string) (string, func(string) string) {
	if r.NotValid() == "" {
		return name, func(s string) string { return s }
	}
	return name + notValidMark, func(string) string { return "-" }
}

// RaftEntriesPer1000 returns Raft entries per 1000 admitted.
func (r Report) RaftEntriesPer1000() float64 {
	if r.Admitted == 0 {
		return 0
	}
	return 1000 * float64(r.RaftEntries) / float64(r.Admitted)
}

// RPCsPer1000 returns the SDK's acquire and release requests per 1000
// admitted.
func (r Report) RPCsPer1000() float64 {
	if r.Admitted == 0 {
		return 0
	}
	return 1000 * float64(r.SDK.Acquires+r.SDK.Releases) / float64(r.Admitted)
}

// Hooks are optional callbacks and settings for a scenario.
type Hooks struct {
	// Progress makes the progress display of a scenario; nil: none.
	Progress func(name string, total time.Duration) *Progress
	// Log receives the SDK's logs; nil: discarded.
	Log *slog.Logger
	// TLS, if set, is the certificate every connection to a Leasehold
	// cluster presents (the SDK's through client.WithTLS); it must be an
	// operator's, as the run sets its keys' limits. nil: plain text.
	TLS *TLSFiles
	// Scrape, if positive, registers client/promcollector's Collector for
	// each SDK Client in a registry of its own and gathers them all every
	// Scrape while the load runs, as a service's Prometheus would: what
	// the SDK's metrics cost the hot path. 0: no collector.
	Scrape time.Duration
	// ScrapeNothing, with Scrape, wakes the scraper every Scrape but
	// registers and gathers nothing: the baseline for the collector's cost.
	// Any goroutine that wakes periodically (a ticker doing nothing)
	// lowers this bench's lease-mode rate by a third on a 2-core machine,
	// where 8 spinning workers share 2 Ps; a service that is scraped has
	// such goroutines anyway (its HTTP server), so only the gather is the
	// collector's.
	ScrapeNothing bool
	// SDKOptions are more options for every SDK Client of a Leasehold
	// run, after the bench's own (security, trace, logger): a failure
	// policy, a request timeout, gRPC dial options.
	SDKOptions []client.Option
}

// runID makes key names unique per run, so that every run starts from full
// buckets even against a cluster or Redis that earlier runs used.
func runID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func keyNames(prefix string, n int) []string {
	id := runID()
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%s-k%d", prefix, id, i)
	}
	return out
}

// run runs cfg with the hooks' progress display.
func run(ctx context.Context, name string, cfg Config, deciders []Decider, h Hooks) (Result, error) {
	if h.Progress != nil {
		p := h.Progress(name, cfg.Duration)
		cfg.Progress, cfg.ProgressEvery = p.Update, p.Every()
		defer p.Done()
	}
	return Run(ctx, cfg, deciders)
}

// check fills in the envelope fields of r, and counts spurious denials if
// the run recorded its calls.
func (r *Report) check() {
	if r.Window != nil {
		r.checkWindow()
		return
	}
	allowed := r.Envelope.Allowed(r.Elapsed)
	ideal := r.Envelope
	ideal.Lease = 0
	for _, n := range r.PerKey {
		r.Allowed = satAdd(r.Allowed, allowed)
		r.Ideal = satAdd(r.Ideal, ideal.Allowed(r.Elapsed))
		r.Over += r.Envelope.Over(n, r.Elapsed)
	}
	switch {
	case r.Unrecorded:
		r.NotCounted = fmt.Sprintf("more than %d calls to record", MaxRecorded)
	case r.Calls == nil && r.Decisions > 0:
		r.NotCounted = "calls not recorded (a closed loop on one key)"
	default:
		n, err := r.Envelope.Spurious(r.Calls)
		if err != nil {
			r.NotCounted = err.Error()
			break
		}
		r.Spurious, r.Counted = n, true
	}
	r.Calls = nil // counted; let them go
}

// Efficiency returns Admitted / Ideal: the share of B + r·Δ admitted.
func (r Report) Efficiency() float64 {
	if r.Ideal == 0 {
		return 0
	}
	return float64(r.Admitted) / float64(r.Ideal)
}

// DemandReached returns the decisions made as a multiple of what the keys'
// limits refill over the run (r·Δ per key): the Demand a paced run
// reached, or what a closed loop asked.
func (r Report) DemandReached() float64 {
	refill := float64(r.Workload.Rate) * float64(r.Elapsed) / float64(r.Workload.Per) * float64(r.Workload.Keys)
	if refill <= 0 {
		return 0
	}
	return float64(r.Decisions) / refill
}

func satAdd(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<63 - 1
}

// RunLeasehold runs w against the cluster at endpoints through the SDK in
// mode: it sets the keys' limits (KeyLimit), dials one Client per simulated
// process, reads the leader's commit index, runs, closes the Clients (they
// give back unused tokens, which are Raft writes too) and reads the commit
// index again.
func RunLeasehold(ctx context.Context, endpoints []string, mode Mode, w Workload, h Hooks) (Report, error) {
	if err := w.Validate(); err != nil {
		return Report{}, err
	}
	lim, env, err := KeyLimit(mode, w.Rate, w.Burst, w.Per)
	var window *WindowEnvelope
	if w.Window {
		if mode != ModeLease {
			return Report{}, fmt.Errorf("a sliding window runs in lease mode only (the SDK decides per key)")
		}
		lim, err = WindowLimit(w.Rate, w.Per, w.Slots, w.MaxLease), nil
		window = &WindowEnvelope{Limit: w.Rate, Window: w.Per}
	}
	if err != nil {
		return Report{}, err
	}
	rep := Report{Name: "leasehold " + mode.String(), Workload: w, Envelope: env, Leasehold: true, SampleEvery: 1, Window: window}
	if w.Window {
		rep.Name = "leasehold window"
	}
	if mode == ModeLease {
		// A leased Allow is tens of nanoseconds: time one call in 64.
		rep.SampleEvery = 64
	}
	sec, sdkOpts := proc.Plaintext, []client.Option{client.WithInsecure()}
	if h.TLS != nil {
		sec, sdkOpts = proc.Security{TLS: h.TLS}, []client.Option{client.WithTLS(h.TLS.Cert, h.TLS.Key, h.TLS.CA)}
	}
	sdkOpts = append(sdkOpts, h.SDKOptions...)
	admin, err := DialAdmin(endpoints, sec)
	if err != nil {
		return rep, err
	}
	defer admin.Close()
	keys := keyNames("bench-"+mode.String(), w.Keys)
	if err := setLimits(ctx, admin, keys, lim); err != nil {
		return rep, err
	}
	fleet, err := DialFleet(ctx, endpoints, w.Clients, keys, lim, h.Log, sdkOpts...)
	if err != nil {
		return rep, err
	}
	defer fleet.Close()
	leader0, commit0, err := admin.Leader(ctx)
	if err != nil {
		return rep, err
	}

	stopScraping := func() int64 { return 0 }
	if h.Scrape > 0 {
		if stopScraping, err = fleet.scrape(h.Scrape, h.ScrapeNothing); err != nil {
			return rep, err
		}
	}
	res, runErr := run(ctx, rep.Name, w.config(rep.SampleEvery), w.spread(fleet.Deciders()), h)
	rep.Scrapes = stopScraping()
	rep.Result = res
	rep.States = fleet.States()
	if err := fleet.Close(); err != nil {
		rep.Notes = append(rep.Notes, "closing the clients: "+err.Error())
	}
	rep.SDK = fleet.Counts()
	rep.check()
	if runErr != nil {
		return rep, runErr
	}

	leader1, commit1, err := admin.Leader(ctx)
	if err != nil {
		return rep, err
	}
	rep.CommitFrom, rep.CommitTo = commit0, commit1
	rep.RaftEntries = int64(commit1 - commit0)
	if leader1 != leader0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("leader changed during the run (%s -> %s)", leader0, leader1))
	}
	// In lease mode the SDK chooses per key between leases and central
	// decisions; in central mode the key grants no leases.
	fine := func(s client.State) bool {
		return s == client.StateCentral || mode == ModeLease && s == client.StateLeased
	}
	for _, s := range slices.Sorted(maps.Keys(rep.States)) {
		if !fine(s) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d limiters ended %v", rep.States[s], w.Clients*w.Keys, s))
		}
	}
	if rep.SDK.AcquireFailed > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d acquires got no answer", rep.SDK.AcquireFailed))
	}
	if rep.SDK.AcquireFull > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d acquires refused: the cluster is full (%s)", rep.SDK.AcquireFull, fullAdvice))
	}
	return rep, nil
}

// setLimits sets lim on every key, setLimitsAtOnce at a time (the leader
// packs concurrent writes into one Raft entry: 20000 keys take a second or
// two, not a minute).
func setLimits(ctx context.Context, admin *Admin, keys []string, lim client.Limit) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(keys))
	sem := make(chan struct{}, setLimitsAtOnce)
	var wg sync.WaitGroup
	for _, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := admin.SetLimit(ctx, k, lim); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // nil if none
}

const setLimitsAtOnce = 64

// RunRedis runs w against the Redis server at addr with the Lua token
// bucket (redislua.Script), one connection per simulated client. With skew
// non-zero, even-numbered clients' clocks run skew ahead and odd-numbered
// ones skew behind. The envelope is B + r·Δ: the script leases nothing.
func RunRedis(ctx context.Context, addr string, skew time.Duration, w Workload, h Hooks) (Report, error) {
	return RunRedisOn(ctx, RedisTarget{Addr: addr}, skew, w, h)
}

// Names of the Redis runs (Report.Name, before any suffix): without
// persistence, with an append-only file fsynced before every reply, and
// with a replica configured so too and a WAIT for it after every call.
const (
	RedisName           = "redis+lua"
	RedisAOFName        = "redis+lua AOF always"
	RedisReplicatedName = "redis+lua AOF always + replica WAIT 1"
)

// A RedisTarget is the Redis server RunRedisOn calls and how.
type RedisTarget struct {
	Addr string
	// Name is the run's name; "" is RedisName.
	Name string
	// WaitReplicas, above 0, makes every decision wait after its call
	// until that many replicas have acknowledged it (WAIT n 0): a decision
	// then survives the loss of the primary, as a Raft commit survives the
	// loss of a node.
	WaitReplicas int
}

// RedisAOF returns the target of Local.RedisAOFAddr: every write fsynced
// before its reply.
func RedisAOF(addr string) RedisTarget { return RedisTarget{Addr: addr, Name: RedisAOFName} }

// RedisReplicated returns the target of Local.RedisReplicatedAddr: every
// write fsynced before its reply, on the primary and, before the WAIT
// returns, received by its replica.
func RedisReplicated(addr string) RedisTarget {
	return RedisTarget{Addr: addr, Name: RedisReplicatedName, WaitReplicas: 1}
}

// RunRedisOn is RunRedis against t.
func RunRedisOn(ctx context.Context, t RedisTarget, skew time.Duration, w Workload, h Hooks) (Report, error) {
	if err := w.Validate(); err != nil {
		return Report{}, err
	}
	addr := t.Addr
	name := t.Name
	if name == "" {
		name = RedisName
	}
	if skew != 0 {
		name = fmt.Sprintf("%s ±%v skew", name, skew)
	}
	rep := Report{Name: name, Workload: w, SampleEvery: 1,
		Envelope: Envelope{Burst: w.Burst, Limit: w.Rate, Per: w.Per}}
	// The script takes a rate per second; keep the bench honest about it.
	if w.Per != time.Second {
		return rep, fmt.Errorf("redis: the script's rate is per second; per %v is not supported", w.Per)
	}
	keys := keyNames("bench:redis", w.Keys)
	var deciders []Decider
	var conns []*redislua.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range w.workers() {
		c, err := redislua.Dial(ctx, addr)
		if err != nil {
			return rep, fmt.Errorf("redis %s: %w", addr, err)
		}
		conns = append(conns, c)
		s := skew // each client's goroutines share its clock
		if i/w.PerClient()%2 == 1 {
			s = -skew
		}
		b, err := redislua.NewBucket(c, keys, w.Rate, w.Burst, s)
		if err != nil {
			return rep, err
		}
		b.SetWaitReplicas(t.WaitReplicas)
		deciders = append(deciders, b)
	}
	// A stuck server must not hang the run: bound every call.
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			_ = c.SetDeadline(time.Now())
		}
	})
	defer stop()
	res, err := run(ctx, name, w.config(1), deciders, h)
	rep.Result = res
	rep.check()
	return rep, err
}

// Summary returns the report's envelope line: what was admitted, what the
// envelope allowed and how it was computed.
func (r Report) Summary() string {
	if r.Window != nil {
		return r.windowSummary()
	}
	e := r.Envelope
	formula := "B + r·Δ"
	if e.Lease > 0 {
		formula = "B + r·(Δ + Λ)"
	}
	per := fmt.Sprintf("%d/%v", e.Limit, e.Per)
	if e.Per == time.Second {
		per = fmt.Sprintf("%d/s", e.Limit)
	}
	span := r.Elapsed.Round(time.Millisecond).String()
	if e.Lease > 0 {
		span += " + " + e.Lease.String()
	}
	keys := ""
	if len(r.PerKey) > 1 {
		keys = fmt.Sprintf(", each of %d keys", len(r.PerKey))
	}
	return fmt.Sprintf("%d admitted, %d allowed = %s = %d + %s·(%s)%s; over-admitted %d",
		r.Admitted, r.Allowed, formula, e.Burst, per, span, keys, r.Over)
}

// String is a multi-line description of one run, for `leasehold bench`.
func (r Report) String() string {
	var b strings.Builder
	w := r.Workload
	clients := plural(w.Clients, "client")
	if g := w.PerClient(); g > 1 {
		clients += fmt.Sprintf(" × %d goroutines", g)
	}
	fmt.Fprintf(&b, "%s: %s, %s, %v, ", r.Name, clients, plural(w.Keys, "key"), w.Duration)
	if r.Window != nil {
		r.windowLine(&b)
	} else {
		fmt.Fprintf(&b, "token bucket %d per %v, burst %d", w.Rate, w.Per, w.Burst)
	}
	if w.Demand > 0 {
		fmt.Fprintf(&b, ", demand %gx", w.Demand)
	}
	switch {
	case r.Window != nil && w.MaxLease > 0:
		fmt.Fprintf(&b, ", max lease %v", w.MaxLease)
	case r.Window == nil && r.Envelope.Lease > 0:
		fmt.Fprintf(&b, ", max lease %v", r.Envelope.Lease)
	}
	b.WriteString("\n")
	if why := r.NotValid(); why != "" {
		fmt.Fprintf(&b, "  NOT VALID        %s\n", why)
	}
	fmt.Fprintf(&b, "  decisions/s      %s (%d decisions, %d admitted, in %v)\n",
		Count(r.DecisionsPerSecond()), r.Decisions, r.Admitted, r.Elapsed.Round(time.Millisecond))
	h := r.Latency
	sampled := "every call timed"
	if r.SampleEvery > 1 {
		sampled = fmt.Sprintf("1 call in %d timed", r.SampleEvery)
	}
	fmt.Fprintf(&b, "  Allow latency    p50 %v  p99 %v  p999 %v  max %v  (%s, %d samples)\n",
		h.Quantile(0.5), h.Quantile(0.99), h.Quantile(0.999), h.Max(), sampled, h.Count())
	fmt.Fprintf(&b, "  envelope         %s\n", r.Summary())
	if r.Window != nil {
		s := r.Shares
		fmt.Fprintf(&b, "  limit used       %.3f of L + L·Δ/W (%d of %d)\n", r.Efficiency(), r.Admitted, r.Ideal)
		fmt.Fprintf(&b, "  per window       admitted in a window of %v as a share of L: median %.3f, mean %.3f, p10 %.3f (%d windows, one every %v)\n",
			w.Per, s.Median, s.Mean, s.P10, s.Windows, w.Per/10)
	} else {
		fmt.Fprintf(&b, "  limit used       %.3f of B + r·Δ (%d of %d)\n", r.Efficiency(), r.Admitted, r.Ideal)
	}
	if w.Demand > 0 {
		fmt.Fprintf(&b, "  demand           %.3g× each key's limit asked, %.3g× reached (one call per %v per goroutine)\n",
			w.Demand, r.DemandReached(), w.Interval())
	}
	if r.Counted {
		fmt.Fprintf(&b, "  spurious denials: %d (of %d denials: refusals the limit did not require, by the bench's B + r·Δ arithmetic)\n",
			r.Spurious, r.Decisions-r.Admitted)
	} else {
		fmt.Fprintf(&b, "  spurious denials: not counted (%s)\n", r.NotCounted)
	}
	if r.Leasehold {
		fmt.Fprintf(&b, "  raft writes      %d entries (leader commit index %d -> %d)\n", r.RaftEntries, r.CommitFrom, r.CommitTo)
		if n := len(r.States); n > 0 {
			var parts []string
			for _, s := range slices.Sorted(maps.Keys(r.States)) {
				parts = append(parts, fmt.Sprintf("%d %v", r.States[s], s))
			}
			fmt.Fprintf(&b, "  limiters         %s\n", strings.Join(parts, ", "))
		}
		d := r.SDK.Decided
		fmt.Fprintf(&b, "  decided by       admitted: %d leased, %d central, %d failure policy; refused: %d cluster, %d late answer, %d failure policy, %d unusable limiter\n",
			d.Leased, d.Central, d.FallbackAdmitted, d.ClusterDenied, d.LateAnswer, d.FallbackDenied, d.Unusable)
		fmt.Fprintf(&b, "  sdk requests     %d acquires (%d denied, %d refused as full, %d unanswered), %d releases; %d tokens granted, %d given back\n",
			r.SDK.Acquires, r.SDK.AcquireDenied, r.SDK.AcquireFull, r.SDK.AcquireFailed, r.SDK.Releases, r.SDK.GrantedTokens, r.SDK.ReleasedTokens)
		fmt.Fprintf(&b, "  per 1000 admitted %.2f raft entries, %.2f acquire+release requests\n", r.RaftEntriesPer1000(), r.RPCsPer1000())
		if r.Scrapes > 0 {
			fmt.Fprintf(&b, "  sdk collector    %d gathers\n", r.Scrapes)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	return b.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
