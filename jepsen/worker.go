//go:build unix

package jepsen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
)

// Workload is what a run's client workers do: the keys, their limits, and
// each worker's demand on each. The runner writes it to workload.json and
// every worker reads it. The limits travel inline with the SDK's requests
// (client.Limit), so a key exists on first use.
type Workload struct {
	Keys []WorkloadKey `json:"keys"`
}

// WorkloadKey is one key of a Workload, or a group of keys with one limit
// each (Keys > 1).
type WorkloadKey struct {
	Key string `json:"key"`
	// Keys makes this entry a group of Keys keys, named Key-000, Key-001,
	// ..., each with the limit below, shared by every worker: the shape of
	// per-tenant limits, many small keys each seen now and then by every
	// process (issue 17). Each of a worker's loops takes the group's keys in
	// turn, from its own starting key; Demand is then per worker for the
	// whole group. 0 or 1: one key.
	Keys int `json:"keys,omitempty"`
	// Algorithm is "token-bucket" or "sliding-window".
	Algorithm string `json:"algorithm"`
	// Rate is the tokens per Per: refilled (token bucket) or admitted in
	// any window of length Per (sliding window).
	Rate int64         `json:"rate"`
	Per  time.Duration `json:"per_ns"`
	// Burst is a token bucket's capacity; 0 means Rate.
	Burst int64 `json:"burst,omitempty"`
	// Strict: a token bucket admits at most Burst + Rate·Δ in any Δ.
	Strict bool `json:"strict,omitempty"`
	// MaxLease is the longest lease the cluster grants on the key (Λ).
	MaxLease time.Duration `json:"max_lease_ns"`
	// Demand is how many Allow calls per second each worker makes (on the
	// key, or over the group's keys).
	Demand float64 `json:"demand"`
	// Callers is how many goroutines of each worker call Allow on the key
	// at once, sharing its Demand; 0 means 1. Several exercise the SDK's
	// concurrent paths: on a central key, requests sharing one Acquire.
	Callers int `json:"callers,omitempty"`
	// Light: all workers together ask for less than the limit. Such a key
	// is there so that clients hold leases with tokens left to the end of
	// their lives, which is where a lease used after its expiry shows; its
	// efficiency is reported but left out of the overall figure.
	Light bool `json:"light,omitempty"`
	// Budget makes this entry a client.Budget on scope Key instead of a
	// Limiter: two token-bucket rules, requests (Rate per Per, Burst) and
	// tokens (Budget.Tokens per Per, Budget.TokenBurst), each with a debt
	// cap of its burst. Each of a worker's loops reserves an estimate and
	// then settles a random actual cost (below, at, or above the estimate:
	// debt) or cancels; see BudgetLoad.
	Budget *BudgetLoad `json:"budget,omitempty"`
}

// BudgetLoad is what a Budget entry of a Workload reserves and settles.
type BudgetLoad struct {
	// Tokens and TokenBurst are the tokens rule's rate (per the entry's
	// Per) and burst.
	Tokens     int64 `json:"tokens"`
	TokenBurst int64 `json:"token_burst"`
	// MaxEstimate bounds a reservation's token estimate, drawn uniformly
	// from [1, MaxEstimate].
	MaxEstimate int64 `json:"max_estimate"`
	// Overshoot is the most a settle exceeds its estimate, as a fraction
	// of it: actual is drawn from [estimate/4, estimate·(1+Overshoot)].
	Overshoot float64 `json:"overshoot"`
	// CancelShare is the share of reservations cancelled instead of
	// settled; UnsettledShare the share left unsettled (charged as
	// reserved).
	CancelShare    float64 `json:"cancel_share"`
	UnsettledShare float64 `json:"unsettled_share"`
}

// budgetRules returns a Budget entry's rules, in the SDK's terms.
func (k WorkloadKey) budgetRules() []client.Rule {
	return []client.Rule{
		{Counts: client.Requests, MaxDebt: k.Burst,
			Limit: client.Limit{Rate: k.Rate, Per: k.Per, Burst: k.Burst, MaxLease: k.MaxLease}},
		{Counts: client.Tokens, MaxDebt: k.Budget.TokenBurst,
			Limit: client.Limit{Rate: k.Budget.Tokens, Per: k.Per, Burst: k.Budget.TokenBurst, MaxLease: k.MaxLease}},
	}
}

// budgetKeySpecs returns a Budget entry's rules as the checkers know them.
func (k WorkloadKey) budgetKeySpecs() []KeySpec {
	var out []KeySpec
	for _, r := range k.budgetRules() {
		out = append(out, KeySpec{Key: k.Key + "/" + r.Counts.String(), Algorithm: AlgorithmTokenBucket,
			Limit: r.Limit.Rate, Period: r.Limit.Per, Burst: r.Limit.Burst, MaxLease: r.Limit.MaxLease,
			Budget: k.Key, MaxDebt: r.MaxDebt})
	}
	return out
}

// Limit returns k's limit as the SDK sends it.
func (k WorkloadKey) Limit() client.Limit {
	alg := client.TokenBucket
	if k.Algorithm == client.SlidingWindow.String() {
		alg = client.SlidingWindow
	}
	return client.Limit{Algorithm: alg, Rate: k.Rate, Per: k.Per, Burst: k.Burst, Strict: k.Strict, MaxLease: k.MaxLease}
}

// RatePerSecond returns k's long-run limit in tokens per second (of each
// key, for a group).
func (k WorkloadKey) RatePerSecond() float64 {
	return float64(k.Rate) / k.Per.Seconds()
}

// TotalRatePerSecond returns RatePerSecond summed over k's keys.
func (k WorkloadKey) TotalRatePerSecond() float64 {
	return k.RatePerSecond() * float64(max(1, k.Keys))
}

// Names returns the names of k's keys: Key, or a group's Key-000, ....
func (k WorkloadKey) Names() []string {
	if k.Keys <= 1 {
		return []string{k.Key}
	}
	out := make([]string, k.Keys)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", k.Key, i)
	}
	return out
}

// DefaultWorkload returns the standard keys, with demand split among clients
// workers so that together they ask for 4–5 times what each key allows:
//
//	tb         token bucket 200/s, burst 100, leases up to 2s
//	tb-strict  strict token bucket 100/s, burst 400, leases up to 1s
//	sw         sliding window 500 per 2s, leases up to 2s
//	sw-central sliding window 10 per 1s, leases up to 1s: a lease would be
//	           worth at most 10 tokens to a client, below the SDK's mark for
//	           leasing (client/DESIGN.md, "Lease or central decision"), so
//	           every request is decided centrally (grants of ttl 0); 4
//	           callers per worker, each worker asking at least twice the
//	           limit (8 times it in all with 4 workers): where a central
//	           answer spent late over-admits (fsm/DESIGN.md, "a central
//	           decision answered late"), which the admissions check
//	           sees by counting a window's central admission from its
//	           answer
//	tiny       token bucket 1/s, burst 2: too small to lease, decided centrally
//	central    strict token bucket 100/s, burst 20: its burst cannot cover a
//	           lease's refill, so decided centrally; 4 callers per worker,
//	           whose requests share Acquires
//	light      token bucket 1000/s, asked for less than that (see Light)
//	tenant     a group of 200 keys, token bucket 2/s burst 2 each, leases up
//	           to 2s, every worker's 8 callers taking them in turn: many
//	           small keys each seen now and then by every process, which
//	           the SDK decides centrally (issue 17); 3 times their limits
//	           in all
//	budget     a Budget of two rules, 100 requests/s (burst 50) and 2000
//	           tokens/s (burst 1000), debt capped at each burst, leases up
//	           to 2s; 2 callers per worker reserve 1–40 tokens and settle
//	           from a quarter of the estimate to 50% above it (debt), 10%
//	           cancelled, 2% never settled; about 3 times its limits
func DefaultWorkload(clients int) Workload {
	clients = max(clients, 1)
	demand := func(perSecond float64) float64 { return max(5, perSecond/float64(clients)) }
	const tenants, tenantRate = 200, 2
	return Workload{Keys: []WorkloadKey{
		{Key: "tb", Algorithm: "token-bucket", Rate: 200, Per: time.Second, Burst: 100, MaxLease: 2 * time.Second, Demand: demand(1000)},
		{Key: "tb-strict", Algorithm: "token-bucket", Rate: 100, Per: time.Second, Burst: 400, Strict: true, MaxLease: time.Second, Demand: demand(500)},
		{Key: "sw", Algorithm: "sliding-window", Rate: 500, Per: 2 * time.Second, MaxLease: 2 * time.Second, Demand: demand(1000)},
		{Key: "sw-central", Algorithm: "sliding-window", Rate: 10, Per: time.Second, MaxLease: time.Second, Demand: max(20, demand(80)), Callers: 4},
		{Key: "tiny", Algorithm: "token-bucket", Rate: 1, Per: time.Second, Burst: 2, MaxLease: 2 * time.Second, Demand: 5},
		{Key: "central", Algorithm: "token-bucket", Rate: 100, Per: time.Second, Burst: 20, Strict: true, MaxLease: time.Second, Demand: demand(500), Callers: 4},
		{Key: "light", Algorithm: "token-bucket", Rate: 1000, Per: time.Second, MaxLease: 2 * time.Second, Demand: 25, Light: true},
		{Key: "tenant", Keys: tenants, Algorithm: "token-bucket", Rate: tenantRate, Per: time.Second, Burst: tenantRate,
			MaxLease: 2 * time.Second, Demand: demand(3 * tenants * tenantRate), Callers: 8},
		{Key: "budget", Algorithm: "token-bucket", Rate: 100, Per: time.Second, Burst: 50, MaxLease: 2 * time.Second,
			Demand: demand(300), Callers: 2,
			Budget: &BudgetLoad{Tokens: 2000, TokenBurst: 1000, MaxEstimate: 40, Overshoot: 0.5, CancelShare: 0.1, UnsettledShare: 0.02}},
	}}
}

// validate reports every problem with w at once.
func (w Workload) validate() error {
	var errs []error
	if len(w.Keys) == 0 {
		errs = append(errs, errors.New("workload has no keys"))
	}
	seen := map[string]bool{}
	for _, k := range w.Keys {
		if seen[k.Key] {
			errs = append(errs, fmt.Errorf("key %q listed twice", k.Key))
		}
		seen[k.Key] = true
		if k.Algorithm != "token-bucket" && k.Algorithm != "sliding-window" {
			errs = append(errs, fmt.Errorf("key %q: algorithm %q: want token-bucket or sliding-window", k.Key, k.Algorithm))
		}
		if k.Rate <= 0 || k.Per <= 0 || k.MaxLease <= 0 {
			errs = append(errs, fmt.Errorf("key %q: rate, per and max lease must be positive", k.Key))
		}
		if !(k.Demand > 0 && k.Demand <= 1e5) {
			errs = append(errs, fmt.Errorf("key %q: demand %v must be in (0, 1e5] per second", k.Key, k.Demand))
		}
		if k.Callers < 0 || k.Callers > maxCallers {
			errs = append(errs, fmt.Errorf("key %q: callers %d must be in [0, %d]", k.Key, k.Callers, maxCallers))
		}
		if k.Keys < 0 || k.Keys > maxGroupKeys {
			errs = append(errs, fmt.Errorf("key %q: keys %d must be in [0, %d]", k.Key, k.Keys, maxGroupKeys))
		}
		if b := k.Budget; b != nil {
			if k.Algorithm != "token-bucket" || k.Keys > 1 || k.Strict {
				errs = append(errs, fmt.Errorf("key %q: a budget is one scope of token buckets, not strict", k.Key))
			}
			if b.Tokens <= 0 || b.TokenBurst <= 0 || k.Burst <= 0 || b.MaxEstimate <= 0 || b.MaxEstimate > b.TokenBurst {
				errs = append(errs, fmt.Errorf("key %q: budget tokens, token burst, burst and max estimate must be positive, the estimate at most the token burst", k.Key))
			}
			if !(b.Overshoot >= 0 && b.Overshoot <= 10) || !(b.CancelShare >= 0 && b.UnsettledShare >= 0 && b.CancelShare+b.UnsettledShare <= 1) {
				errs = append(errs, fmt.Errorf("key %q: budget overshoot must be in [0, 10], cancel and unsettled shares in [0, 1] together", k.Key))
			}
		}
	}
	for _, k := range w.Keys {
		if k.Keys <= 1 {
			continue
		}
		for _, n := range k.Names() {
			if seen[n] {
				errs = append(errs, fmt.Errorf("key %q of group %q is listed twice", n, k.Key))
			}
			seen[n] = true
		}
	}
	return errors.Join(errs...)
}

// maxCallers bounds WorkloadKey.Callers, maxGroupKeys WorkloadKey.Keys.
const (
	maxCallers   = 64
	maxGroupKeys = 10000
)

// callers returns how many loops each worker runs on k.
func (k WorkloadKey) callers() int { return max(1, k.Callers) }

// maxLease returns the longest MaxLease of w's keys.
func (w Workload) maxLease() time.Duration {
	var d time.Duration
	for _, k := range w.Keys {
		d = max(d, k.MaxLease)
	}
	return d
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadWorkload reads and validates a workload.json.
func ReadWorkload(path string) (Workload, error) {
	var w Workload
	b, err := os.ReadFile(path)
	if err != nil {
		return w, err
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	if err := w.validate(); err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// WorkerConfig configures a client worker process (`jepsen worker`).
type WorkerConfig struct {
	// Name is the worker's process name in the history (c1, c2, ...) and
	// its SDK client id.
	Name string
	// Endpoints are the nodes' client API addresses.
	Endpoints []string
	// Workload is the path of the run's workload.json.
	Workload string
	// History is the path of the worker's own history file (JSON lines).
	History string
	// Seed drives the worker's pacing jitter.
	Seed int64
	// Duration is how long the worker makes requests; then it closes its
	// client (giving back unused tokens) and exits.
	Duration time.Duration
	// TLS is the client certificate the worker's SDK presents
	// (client.WithTLS); nil speaks plain text (client.WithInsecure).
	TLS *proc.TLSFiles
}

// Args returns cfg as the command-line flags ParseWorkerArgs reads.
func (cfg WorkerConfig) Args() []string {
	args := []string{
		"--name", cfg.Name,
		"--endpoints", strings.Join(cfg.Endpoints, ","),
		"--workload", cfg.Workload,
		"--history", cfg.History,
		"--seed", fmt.Sprint(cfg.Seed),
		"--duration", cfg.Duration.String(),
	}
	if cfg.TLS != nil {
		return append(args, "--ca", cfg.TLS.CA, "--cert", cfg.TLS.Cert, "--key", cfg.TLS.Key)
	}
	return append(args, "--insecure")
}

// ParseWorkerArgs parses a worker's flags (see WorkerConfig.Args).
func ParseWorkerArgs(args []string) (WorkerConfig, error) {
	var cfg WorkerConfig
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.StringVar(&cfg.Name, "name", "c1", "process name in the history, and SDK client id")
	endpoints := fs.String("endpoints", "", "nodes' client API addresses, comma-separated (required)")
	fs.StringVar(&cfg.Workload, "workload", "workload.json", "the run's workload file")
	fs.StringVar(&cfg.History, "history", "", "this worker's history file (required)")
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of the pacing jitter")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to make requests")
	var tlsFiles proc.TLSFiles
	fs.StringVar(&tlsFiles.CA, "ca", "", "the cluster's CA (with --cert and --key)")
	fs.StringVar(&tlsFiles.Cert, "cert", "", "the worker's client certificate")
	fs.StringVar(&tlsFiles.Key, "key", "", "the key of --cert")
	insecure := fs.Bool("insecure", false, "speak plain text to nodes serving without TLS")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if tlsFiles != (proc.TLSFiles{}) {
		cfg.TLS = &tlsFiles
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			cfg.Endpoints = append(cfg.Endpoints, e)
		}
	}
	var errs []error
	if cfg.Name == "" {
		errs = append(errs, errors.New("--name is empty"))
	}
	if len(cfg.Endpoints) == 0 {
		errs = append(errs, errors.New("--endpoints: give at least one"))
	}
	if cfg.History == "" {
		errs = append(errs, errors.New("--history is required"))
	}
	if cfg.Duration <= 0 || cfg.Duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("--duration %v: want (0, 24h]", cfg.Duration))
	}
	switch f := cfg.TLS; {
	case f != nil && *insecure:
		errs = append(errs, errors.New("--insecure and --ca/--cert/--key exclude each other"))
	case f != nil && (f.CA == "" || f.Cert == "" || f.Key == ""):
		errs = append(errs, errors.New("--ca, --cert and --key go together"))
	case f == nil && !*insecure:
		errs = append(errs, errors.New("give --ca, --cert and --key, or --insecure"))
	}
	return cfg, errors.Join(errs...)
}

// RunWorker runs a client worker: one SDK Client with a Limiter per
// workload key, each driven by the key's Callers goroutines at the key's
// demand until cfg.Duration passes or ctx ends, every operation recorded in
// cfg.History (see Event: allow from the loops, grant and release from the
// SDK's trace). Each second it writes "ops=N admitted=M" to progress. Then
// it closes the Client, whose releases are recorded too.
func RunWorker(ctx context.Context, cfg WorkerConfig, progress io.Writer, log *slog.Logger) error {
	w, err := ReadWorkload(cfg.Workload)
	if err != nil {
		return err
	}
	hist, err := createEventFile(cfg.History, cfg.Name)
	if err != nil {
		return err
	}
	rec := newTraceRecorder(hist, cfg.Name)
	security := client.WithInsecure()
	if f := cfg.TLS; f != nil {
		security = client.WithTLS(f.Cert, f.Key, f.CA)
	}
	c, err := client.Dial(ctx, cfg.Endpoints, client.WithTrace(rec.trace()),
		client.WithClientID([]byte(cfg.Name)), client.WithLogger(log), security)
	if err != nil {
		hist.close()
		return err
	}

	var ops, admitted atomic.Int64
	deadline := time.Now().Add(cfg.Duration)
	done := make(chan struct{})
	var reporter sync.WaitGroup
	reporter.Go(func() { // flushes the history and reports progress each second
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := hist.flush(); err != nil {
					log.Error("history", "err", err)
				}
				fmt.Fprintf(progress, "ops=%d admitted=%d\n", ops.Load(), admitted.Load())
			}
		}
	})
	var loops sync.WaitGroup
	for i, k := range w.Keys {
		if k.Budget != nil {
			b := c.Budget(k.Key, k.budgetRules()...)
			keys := b.Keys()
			for j := range k.callers() {
				rng := rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(i)|uint64(j)<<32))
				loops.Go(func() {
					driveBudget(ctx, b, keys, k, hist, rng, deadline, cfg.Duration, &ops, &admitted)
				})
			}
			continue
		}
		names := k.Names()
		lims := make([]*client.Limiter, len(names))
		for n, name := range names {
			lims[n] = c.Limiter(name, k.Limit())
		}
		for j := range k.callers() {
			rng := rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(i)|uint64(j)<<32))
			loops.Go(func() {
				slot := rec.enter(k.Key)
				defer rec.leave()
				drive(ctx, lims, names, k, slot, hist, rng, deadline, cfg.Duration, &ops, &admitted)
			})
		}
	}
	loops.Wait()
	closeErr := c.Close()
	close(done)
	reporter.Wait()
	fmt.Fprintf(progress, "ops=%d admitted=%d\n", ops.Load(), admitted.Load())
	if err := hist.close(); err != nil {
		return err
	}
	if closeErr != nil {
		log.Warn("close client", "err", closeErr)
	}
	return nil
}

// drive is one of k's loops: it calls Allow at about its share of k.Demand
// (each pause drawn from [0.5, 1.5] of the mean) until deadline, ctx's end,
// or a bound on the count, recording each call's invoke and its outcome. A
// group's loop takes its keys (lims, names) in turn from a random one.
func drive(ctx context.Context, lims []*client.Limiter, names []string, k WorkloadKey, slot *admitSlot, hist *eventFile,
	rng *rand.Rand, deadline time.Time, d time.Duration, ops, admitted *atomic.Int64) {
	demand := k.Demand / float64(k.callers())
	interval := float64(time.Second) / demand
	maxOps := int(d.Seconds()*demand*2) + 10
	next := time.Now()
	at := rng.IntN(len(lims))
	for range maxOps {
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return
		}
		lim, key := lims[at], names[at]
		at = (at + 1) % len(lims)
		id := hist.newID()
		slot.key = key
		slot.reset()
		hist.record(Event{Type: Invoke, Op: OpAllow, ID: id, Key: key, N: 1})
		ok := lim.Allow()
		e := Event{Type: Fail, Op: OpAllow, ID: id, Key: key, N: 1}
		if ok {
			e.Type = OK
			e.Lease, e.Value = slot.outcome()
			admitted.Add(1)
		}
		hist.record(e)
		ops.Add(1)
		next = next.Add(time.Duration(interval * (0.5 + rng.Float64())))
		if now := time.Now(); next.Before(now.Add(-100 * time.Millisecond)) {
			next = now // after a stall (a pause, a slow Allow), do not burst to catch up
		}
		if sleepUntil(ctx, next) != nil {
			return
		}
	}
}

// driveBudget is one of a Budget entry's loops: at about its share of
// k.Demand it reserves (TryReserve, without waiting) one request and a
// random estimate of tokens, holds the reservation a few milliseconds (the
// call), then settles a random actual cost, cancels, or leaves it
// unsettled, recording every step once per rule key (keys, in the rules'
// order): reserve, settle and cancel operations sharing a Res, their N the
// rule's amount. Bounded like drive.
func driveBudget(ctx context.Context, b *client.Budget, keys []string, k WorkloadKey, hist *eventFile,
	rng *rand.Rand, deadline time.Time, d time.Duration, ops, admitted *atomic.Int64) {
	load := k.Budget
	demand := k.Demand / float64(k.callers())
	interval := float64(time.Second) / demand
	maxOps := int(d.Seconds()*demand*2) + 10
	next := time.Now()
	amounts := func(c client.Cost) []int64 { return []int64{c.Requests, c.InputTokens + c.OutputTokens} }
	// record records op on every rule with its amount, as one event pair
	// per rule, invoked before call and completed after it.
	record := func(op string, res uint64, ns []int64, call func() (string, error)) error {
		ids := make([]uint64, len(keys))
		for i, key := range keys {
			ids[i] = hist.newID()
			hist.record(Event{Type: Invoke, Op: op, ID: ids[i], Key: key, N: ns[i], Res: res})
		}
		typ, err := call()
		value := ""
		if err != nil {
			value = shorten(err.Error())
		}
		for i, key := range keys {
			hist.record(Event{Type: typ, Op: op, ID: ids[i], Key: key, Res: res, Value: value})
		}
		return err
	}
	for range maxOps {
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return
		}
		res := hist.newID() // unique within the process
		est := client.Cost{Requests: 1, OutputTokens: 1 + rng.Int64N(load.MaxEstimate)}
		var r client.Reservation
		err := record(OpReserve, res, amounts(est), func() (string, error) {
			var err error
			if r, err = b.TryReserve(est); err != nil {
				return Fail, err
			}
			return OK, nil
		})
		ops.Add(1)
		if err == nil {
			admitted.Add(1)
			if sleepUntil(ctx, time.Now().Add(time.Duration(rng.Int64N(int64(5*time.Millisecond))))) != nil {
				return // the reservation stays charged as reserved
			}
			switch p := rng.Float64(); {
			case p < load.CancelShare:
				_ = record(OpCancel, res, []int64{0, 0}, func() (string, error) {
					if err := r.Cancel(); err != nil {
						return Info, err
					}
					return OK, nil
				})
			case p < load.CancelShare+load.UnsettledShare:
				// Never settled: charged as reserved.
			default:
				lo, hi := max(1, est.OutputTokens/4), int64(float64(est.OutputTokens)*(1+load.Overshoot))
				actual := client.Cost{Requests: 1, OutputTokens: lo + rng.Int64N(hi-lo+1)}
				_ = record(OpSettle, res, amounts(actual), func() (string, error) {
					// A failed Settle may have charged the excess: its
					// outcome is unknown.
					if err := r.Settle(ctx, actual); err != nil {
						return Info, err
					}
					return OK, nil
				})
			}
		}
		next = next.Add(time.Duration(interval * (0.5 + rng.Float64())))
		if now := time.Now(); next.Before(now.Add(-100 * time.Millisecond)) {
			next = now
		}
		if sleepUntil(ctx, next) != nil {
			return
		}
	}
}

// admitSlot carries the trace's report of an admission to the loop that
// called Allow. The SDK reports an admission on the goroutine that called
// Allow, before it returns; the recorder gives each loop's goroutine its own
// slot, so a report made anywhere else finds none, and the Allow it belonged
// to is recorded "untraced". Only its loop's goroutine touches a slot.
type admitSlot struct {
	key   string
	lease uint64
	src   client.AdmitSource
	count int // reports since reset, counting any for another key twice
}

func (s *admitSlot) reset() { *s = admitSlot{key: s.key} }

func (s *admitSlot) add(info client.AdmitInfo) {
	s.lease, s.src = info.LeaseID, info.Source
	s.count++
	if info.Key != s.key {
		s.count++
	}
}

// outcome returns the lease an admission was spent from, and the Value
// recording how: "fallback" for a failure-policy admission, "untraced" if
// the SDK did not report exactly this admission (a tracing bug), "" otherwise.
func (s *admitSlot) outcome() (uint64, string) {
	switch {
	case s.count != 1:
		return 0, "untraced"
	case s.src == client.AdmitFallback:
		return 0, ValueFallback
	}
	return s.lease, ""
}

// traceRecorder turns the SDK's trace into history events. It is safe for
// concurrent use.
type traceRecorder struct {
	hist     *eventFile
	clientID string
	slots    sync.Map // goroutine id (uint64) -> *admitSlot of the loop running on it
	mu       struct {
		sync.Mutex
		grants   map[uint64]uint64 // seq -> event id of an Acquire in flight
		releases map[uint64]uint64 // seq -> event id of a Release in flight
		leaseKey map[uint64]string // lease id -> key, to name a release's key
	}
}

func newTraceRecorder(hist *eventFile, clientID string) *traceRecorder {
	r := &traceRecorder{hist: hist, clientID: clientID}
	r.mu.grants = map[uint64]uint64{}
	r.mu.releases = map[uint64]uint64{}
	r.mu.leaseKey = map[uint64]string{}
	return r
}

// enter gives the calling goroutine, a loop on key, its admitSlot; leave
// takes it back.
func (r *traceRecorder) enter(key string) *admitSlot {
	s := &admitSlot{key: key}
	r.slots.Store(goid(), s)
	return s
}

func (r *traceRecorder) leave() { r.slots.Delete(goid()) }

func (r *traceRecorder) trace() *client.Trace {
	return &client.Trace{
		AcquireStart: r.acquireStart,
		AcquireDone:  r.acquireDone,
		Admit: func(info client.AdmitInfo) {
			if s, ok := r.slots.Load(goid()); ok {
				s.(*admitSlot).add(info)
			}
		},
		ReleaseStart: r.releaseStart,
		ReleaseDone:  r.releaseDone,
	}
}

// goid returns the calling goroutine's id, read from the first line of its
// stack trace ("goroutine 18 [running]:"); 0 if that cannot be parsed. Go
// hides goroutine identity on purpose, and SDK code must not depend on it;
// the harness needs it because what it checks, the trace's promise to
// report an admission on the caller's goroutine, is about goroutine
// identity. It costs a microsecond or two, per admission.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b, ok := bytes.CutPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); ok && i > 0 {
		id, _ := strconv.ParseUint(string(b[:i]), 10, 64)
		return id
	}
	return 0
}

func (r *traceRecorder) acquireStart(info client.AcquireStartInfo) {
	id := r.hist.newID()
	r.mu.Lock()
	r.mu.grants[info.Seq] = id
	r.mu.Unlock()
	e := Event{Type: Invoke, Op: OpGrant, ID: id, Key: info.Key, N: info.Count, ClientID: r.clientID, Seq: info.Seq}
	if info.TTL == 0 {
		e.Value = "central"
	}
	r.hist.record(e)
}

func (r *traceRecorder) acquireDone(info client.AcquireDoneInfo) {
	r.mu.Lock()
	id := r.mu.grants[info.Seq]
	delete(r.mu.grants, info.Seq)
	if info.Err == nil && info.Allowed && info.LeaseID != 0 {
		r.mu.leaseKey[info.LeaseID] = info.Key
	}
	r.mu.Unlock()
	e := Event{Op: OpGrant, ID: id, Key: info.Key, ClientID: r.clientID, Seq: info.Seq}
	switch {
	case info.Err == nil && info.Allowed:
		e.Type, e.Lease, e.N, e.TTL, e.LogTime = OK, info.LeaseID, info.Granted, int64(info.TTL), int64(info.LogTime)
		e.Pieces, e.PieceNs = info.Pieces, int64(info.Piece)
		e.QueuedNs, e.AnsweredNs = int64(info.Queued), int64(info.Answered)
	case info.Err == nil:
		e.Type, e.Value, e.LogTime = Fail, "denied", int64(info.LogTime)
	case errors.Is(info.Err, transport.ErrInvalid) || errors.Is(info.Err, transport.ErrNoLimit):
		e.Type, e.Value = Fail, shorten(info.Err.Error())
	default: // the cluster may or may not have applied it
		e.Type, e.Value = Info, shorten(info.Err.Error())
	}
	r.hist.record(e)
}

func (r *traceRecorder) releaseStart(info client.ReleaseStartInfo) {
	id := r.hist.newID()
	r.mu.Lock()
	r.mu.releases[info.Seq] = id
	key := r.mu.leaseKey[info.LeaseID]
	r.mu.Unlock()
	r.hist.record(Event{Type: Invoke, Op: OpRelease, ID: id, Key: key, Lease: info.LeaseID, N: info.Unused,
		ClientID: r.clientID, Seq: info.Seq})
}

func (r *traceRecorder) releaseDone(info client.ReleaseDoneInfo) {
	r.mu.Lock()
	id := r.mu.releases[info.Seq]
	delete(r.mu.releases, info.Seq)
	key := r.mu.leaseKey[info.LeaseID]
	r.mu.Unlock()
	e := Event{Op: OpRelease, ID: id, Key: key, Lease: info.LeaseID, ClientID: r.clientID, Seq: info.Seq}
	switch {
	case info.Err == nil && info.Released:
		e.Type, e.LogTime = OK, int64(info.LogTime)
	case info.Err == nil: // the cluster no longer knew the lease: nothing given back
		e.Type, e.Value, e.LogTime = Fail, "lease unknown or expired", int64(info.LogTime)
	default:
		e.Type, e.Value = Info, shorten(info.Err.Error())
	}
	r.hist.record(e)
}

// shorten cuts an error message for the history.
func shorten(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
