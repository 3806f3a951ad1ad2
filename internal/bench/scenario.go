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
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/bench/redislua"
)

// Workload is what every scenario runs: Clients simulated processes, each
// with Concurrency goroutines, calling Allow in a closed loop on Keys token
// buckets of Rate per Per with Burst, for Duration. Demand is far above the
// limit, so the limiter decides (mostly "no") as fast as it can.
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
	if w.Rate <= 0 || w.Burst <= 0 || w.Per <= 0 {
		errs = append(errs, fmt.Errorf("rate %d, burst %d and per %v must be positive", w.Rate, w.Burst, w.Per))
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

	// Leasehold only.
	Leasehold   bool
	RaftEntries int64 // leader commit index after − before
	CommitFrom  uint64
	CommitTo    uint64
	SDK         SDKCounts
	States      map[client.State]int // Limiters by state when the run ended
	Notes       []string             // anything that makes the numbers suspect
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

// check fills in the envelope fields of r.
func (r *Report) check() {
	allowed := r.Envelope.Allowed(r.Elapsed)
	for _, n := range r.PerKey {
		r.Allowed = satAdd(r.Allowed, allowed)
		r.Over += r.Envelope.Over(n, r.Elapsed)
	}
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
	if err != nil {
		return Report{}, err
	}
	rep := Report{Name: "leasehold " + mode.String(), Workload: w, Envelope: env, Leasehold: true, SampleEvery: 1}
	if mode == ModeLease {
		// A leased Allow is tens of nanoseconds: time one call in 64.
		rep.SampleEvery = 64
	}
	var adminOpts []grpc.DialOption
	sdkOpts := []client.Option{client.WithInsecure()}
	if h.TLS != nil {
		creds, err := h.TLS.DialOption()
		if err != nil {
			return rep, err
		}
		adminOpts = append(adminOpts, creds)
		sdkOpts = []client.Option{client.WithTLS(h.TLS.Cert, h.TLS.Key, h.TLS.CA)}
	}
	admin, err := DialAdmin(endpoints, adminOpts...)
	if err != nil {
		return rep, err
	}
	defer admin.Close()
	keys := keyNames("bench-"+mode.String(), w.Keys)
	for _, k := range keys {
		if err := admin.SetLimit(ctx, k, lim); err != nil {
			return rep, err
		}
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

	cfg := Config{Clients: w.workers(), Keys: w.Keys, Duration: w.Duration, SampleEvery: rep.SampleEvery}
	res, runErr := run(ctx, rep.Name, cfg, w.spread(fleet.Deciders()), h)
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
	want := client.StateLeased
	if mode == ModeCentral {
		want = client.StateCentral
	}
	for _, s := range slices.Sorted(maps.Keys(rep.States)) {
		if s != want {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d limiters ended %v, not %v", rep.States[s], w.Clients*w.Keys, s, want))
		}
	}
	if rep.SDK.AcquireFailed > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d acquires got no answer", rep.SDK.AcquireFailed))
	}
	return rep, nil
}

// RunRedis runs w against the Redis server at addr with the Lua token
// bucket (redislua.Script), one connection per simulated client. With skew
// non-zero, even-numbered clients' clocks run skew ahead and odd-numbered
// ones skew behind. The envelope is B + r·Δ: the script leases nothing.
func RunRedis(ctx context.Context, addr string, skew time.Duration, w Workload, h Hooks) (Report, error) {
	if err := w.Validate(); err != nil {
		return Report{}, err
	}
	name := "redis+lua"
	if skew != 0 {
		name = fmt.Sprintf("redis+lua ±%v skew", skew)
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
		deciders = append(deciders, b)
	}
	// A stuck server must not hang the run: bound every call.
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			_ = c.SetDeadline(time.Now())
		}
	})
	defer stop()
	cfg := Config{Clients: w.workers(), Keys: w.Keys, Duration: w.Duration, SampleEvery: 1}
	res, err := run(ctx, name, cfg, deciders, h)
	rep.Result = res
	rep.check()
	return rep, err
}

// Summary returns the report's envelope line: what was admitted, what the
// envelope allowed and how it was computed.
func (r Report) Summary() string {
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
	fmt.Fprintf(&b, "%s: %s, %s, %v, token bucket %d per %v, burst %d",
		r.Name, clients, plural(w.Keys, "key"), w.Duration, w.Rate, w.Per, w.Burst)
	if r.Envelope.Lease > 0 {
		fmt.Fprintf(&b, ", max lease %v", r.Envelope.Lease)
	}
	b.WriteString("\n")
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
	if r.Leasehold {
		fmt.Fprintf(&b, "  raft writes      %d entries (leader commit index %d -> %d)\n", r.RaftEntries, r.CommitFrom, r.CommitTo)
		fmt.Fprintf(&b, "  sdk requests     %d acquires (%d denied, %d unanswered), %d releases; %d tokens granted, %d given back\n",
			r.SDK.Acquires, r.SDK.AcquireDenied, r.SDK.AcquireFailed, r.SDK.Releases, r.SDK.GrantedTokens, r.SDK.ReleasedTokens)
		fmt.Fprintf(&b, "  per 1000 admitted %.2f raft entries, %.2f acquire+release requests\n", r.RaftEntriesPer1000(), r.RPCsPer1000())
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
