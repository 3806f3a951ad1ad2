package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/fakeprovider"
	"github.com/leasehold/leasehold/internal/proc"
)

// aiDemo is one run of `leasehold ai-demo`: its flags and what it started.
type aiDemo struct {
	self       string
	dir        string
	workers    int
	goroutines int
	duration   time.Duration
	stopFor    time.Duration
	rpm, tpm   int64
	maxTokens  int64
	latency    time.Duration
	margin     time.Duration
	model      string
	starts     int // runs of workers so far, naming their start files

	cluster  *proc.Cluster
	app      proc.TLSFiles
	provider *recorder
	url      string
	runs     int
}

// demoRow is one row of the side-by-side table.
type demoRow struct {
	name    string
	stats   fakeprovider.Stats // the provider's counters for the row's model
	elapsed time.Duration      // from the first worker's start to the last one's exit
	reports []workerReport
	// elections is how much the cluster's Raft term rose during the row:
	// elections, held when its nodes missed heartbeats (a starved
	// machine), during which the Budget admits nothing.
	elections uint64
}

// used is the tokens the provider charged the row's calls (net of what it
// gave back when replies ended short) as a share of its token limit over the
// row: it starts the row empty, so the most it admits is the refill,
// tpm·elapsed.
func (r demoRow) used(tpm int64) float64 {
	allowed := float64(tpm) * r.elapsed.Minutes()
	if allowed <= 0 {
		return 0
	}
	return float64(r.stats.ChargedTokens) / allowed
}

// warmP50 is the median pre-send time of the calls reserved on warm leases,
// over all workers.
func (r demoRow) warmP50() (time.Duration, int, int64) {
	var all []int64
	var waited int64
	for _, rep := range r.reports {
		all = append(all, rep.Warm...)
		waited += rep.Waited
	}
	if len(all) == 0 {
		return 0, 0, waited
	}
	slices.Sort(all)
	return time.Duration(all[len(all)/2]), len(all), waited
}

func (r demoRow) calls() (calls, ok, errs int64) {
	for _, rep := range r.reports {
		calls += rep.Calls
		ok += rep.OK
		errs += rep.Errors
	}
	return
}

// runAIDemo is `leasehold ai-demo`: a local 3-node cluster over mutual TLS
// and a fake OpenAI provider with RPM and TPM limits (both on loopback),
// then --workers worker processes × --goroutines goroutines calling it
// through openai-go, three times: through the outbound guard over a Budget
// equal to the provider's limits, through a per-process x/time/rate at the
// limit / workers, and with no limiter. Then an outside spender drains the
// provider while the workers run through the guard, and it prints how long
// after the first 429 the last call reached the provider. The last line is
// the summary; it returns an error if the provider answered the guarded
// row with any 429.
func runAIDemo(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("ai-demo", flag.ContinueOnError)
	d := &aiDemo{}
	fs.IntVar(&d.workers, "workers", 4, "worker processes")
	fs.IntVar(&d.goroutines, "goroutines", 16, "goroutines per worker calling the provider at once")
	fs.DurationVar(&d.duration, "duration", 20*time.Second, "length of each of the three rows (a row ends with about 0.5s of the provider's refill in the cluster's stock between grants, so shorter rows use less)")
	fs.DurationVar(&d.margin, "start-margin", 3*time.Second, "time the workers get to start and dial before they are all told to begin calling")
	fs.DurationVar(&d.stopFor, "stop-duration", 8*time.Second, "length of the outside-spender run (0: none); a third of the way in, the spender leaves the provider owing half this long of refill")
	fs.Int64Var(&d.rpm, "rpm", 30_000, "the provider's requests per minute")
	fs.Int64Var(&d.tpm, "tpm", 1_200_000, "the provider's tokens per minute (input + output)")
	fs.Int64Var(&d.maxTokens, "max-tokens", 256, "max_completion_tokens of every call; replies are uniform in [1, max]")
	fs.DurationVar(&d.latency, "latency", 20*time.Millisecond, "the provider's time to answer")
	fs.StringVar(&d.dir, "dir", "", "directory for the cluster's data, certificates and logs (default: a temporary directory, removed afterwards)")
	fs.StringVar(&d.model, "model", "gpt-4.1", "the model called")
	rowList := fs.String("rows", "leasehold,per-process,none", "the rows to run, in order (the summary line needs all three)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var bad []error
	if d.workers < 1 || d.workers > 64 {
		bad = append(bad, fmt.Errorf("--workers %d: want 1 to 64", d.workers))
	}
	if d.goroutines < 1 || d.goroutines > 1024 {
		bad = append(bad, fmt.Errorf("--goroutines %d: want 1 to 1024", d.goroutines))
	}
	if d.duration < time.Second || d.duration > 10*time.Minute {
		bad = append(bad, fmt.Errorf("--duration %v: want 1s to 10m", d.duration))
	}
	if d.stopFor != 0 && (d.stopFor < 3*time.Second || d.stopFor > 10*time.Minute) {
		bad = append(bad, fmt.Errorf("--stop-duration %v: want 0, or 3s to 10m", d.stopFor))
	}
	if d.rpm < int64(d.workers) || d.tpm < int64(d.workers)*d.maxTokens*2 {
		bad = append(bad, fmt.Errorf("--rpm %d and --tpm %d: want at least --workers and 2·--workers·--max-tokens", d.rpm, d.tpm))
	}
	if d.maxTokens < 1 {
		bad = append(bad, fmt.Errorf("--max-tokens %d: want at least 1", d.maxTokens))
	}
	if d.margin < 100*time.Millisecond || d.margin > time.Minute {
		bad = append(bad, fmt.Errorf("--start-margin %v: want 100ms to 1m", d.margin))
	}
	if d.latency < 0 {
		bad = append(bad, fmt.Errorf("--latency %v: want 0 or more", d.latency))
	}
	if err := errors.Join(bad...); err != nil {
		return err
	}
	if d.self, err = os.Executable(); err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	if d.dir == "" {
		tmp, terr := os.MkdirTemp("", "leasehold-ai-demo-")
		if terr != nil {
			return terr
		}
		d.dir = tmp
		defer os.RemoveAll(tmp)
	}

	if err := d.startCluster(ctx); err != nil {
		return err
	}
	defer func() {
		if serr := d.stopCluster(); serr != nil && err == nil {
			err = serr // a node that died on its own makes the numbers suspect
		}
	}()
	d.provider = &recorder{}
	srv := httptest.NewServer(d.provider)
	defer srv.Close()
	d.url = srv.URL + "/v1/"
	fmt.Fprintf(os.Stderr, "ai-demo: provider %s, %s: %d RPM, %d TPM, %v per call; %d workers × %d goroutines, max_completion_tokens %d\n",
		srv.URL, d.model, d.rpm, d.tpm, d.latency, d.workers, d.goroutines, d.maxTokens)

	modes := splitList(*rowList)
	for _, m := range modes {
		if m != demoLeasehold && m != demoPerProcess && m != demoNone {
			return fmt.Errorf("--rows: %q is not leasehold, per-process or none", m)
		}
	}
	byName := map[string]demoRow{}
	for _, mode := range modes {
		row, err := d.row(ctx, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		d.printRow(stdout, row)
		byName[mode] = row
	}
	if d.stopFor > 0 {
		if err := d.stopRun(ctx, stdout); err != nil {
			return fmt.Errorf("outside spender: %w", err)
		}
	}

	lh, ok1 := byName[demoLeasehold]
	pp, ok2 := byName[demoPerProcess]
	none, ok3 := byName[demoNone]
	if !ok1 || !ok2 || !ok3 {
		return nil // no summary without the three rows
	}
	p50, _, _ := lh.warmP50()
	fmt.Fprintf(stdout, "ai-demo: leasehold 429s=%d used=%.2f added-p50=%v; per-process 429s=%d used=%.2f; none 429s=%d used=%.2f\n",
		lh.stats.RateLimited, lh.used(d.tpm), p50, pp.stats.RateLimited, pp.used(d.tpm), none.stats.RateLimited, none.used(d.tpm))
	if lh.stats.RateLimited > 0 {
		return fmt.Errorf("the provider answered %d calls made through Leasehold with 429", lh.stats.RateLimited)
	}
	return nil
}

// startCluster starts three nodes over mutual TLS under d.dir and waits for
// a leader; it issues the workers' client certificate.
func (d *aiDemo) startCluster(ctx context.Context) error {
	// Gossip: the nodes bootstrap once all three have met
	// (--bootstrap-expect), so one that starts late on a slow machine is not
	// refused as a node that may have lost its state, as a static --peers
	// node started after the others elected a leader is.
	layout := proc.Layout{Nodes: 3, Dir: d.dir, LogLevel: "warn", Gossip: true}
	certs, err := layout.Certs()
	if err != nil {
		return err
	}
	if d.app, err = certs.Client("ai-demo"); err != nil {
		return err
	}
	specs, err := layout.Specs()
	if err != nil {
		return err
	}
	d.cluster, err = proc.NewCluster(proc.ClusterConfig{Binary: d.self, Nodes: specs, Certs: certs, Insecure: layout.Insecure})
	if err != nil {
		return err
	}
	if err := d.cluster.Start(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	leader, err := d.cluster.WaitLeader(wctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "ai-demo: 3-node cluster over mutual TLS at %s, leader %s, dir %s\n",
		strings.Join(d.cluster.Endpoints(), ","), leader.ID(), d.dir)
	return nil
}

// stopCluster stops the nodes by PID and reports any that exited on its own.
func (d *aiDemo) stopCluster() error {
	if d.cluster == nil {
		return nil
	}
	var errs []error
	for _, e := range d.cluster.UnexpectedExits() {
		errs = append(errs, &proc.ExitError{Exit: e})
	}
	errs = append(errs, d.cluster.StopAll(10*time.Second))
	_ = d.cluster.Close()
	return errors.Join(errs...)
}

// fresh gives the recorder a new provider, every bucket full, and returns
// it with the Budget scope of the run: a scope per run, so that no run
// starts with what the last one left in the cluster.
func (d *aiDemo) fresh() (*fakeprovider.Provider, string, error) {
	cfg := fakeprovider.DefaultConfig()
	cfg.Default = fakeprovider.Limits{RequestsPerMinute: d.rpm, TokensPerMinute: d.tpm}
	cfg.Latency = d.latency
	cfg.RefundUnusedOutput = true
	p, err := fakeprovider.New(cfg)
	if err != nil {
		return nil, "", err
	}
	d.provider.set(p)
	d.runs++
	return p, fmt.Sprintf("openai:ai-demo-%d:%s", d.runs, d.model), nil
}

// row runs the workers with mode against a fresh provider. Right before
// they begin calling, it empties the provider's token bucket (and the
// Budget's, for leasehold; each per-process limiter empties its own), so
// that the run measures the steady state, not a minute's burst.
func (d *aiDemo) row(ctx context.Context, mode string) (demoRow, error) {
	p, scope, err := d.fresh()
	if err != nil {
		return demoRow{}, err
	}
	var c *client.Client
	if mode == demoLeasehold {
		if c, err = d.dial(ctx); err != nil {
			return demoRow{}, err
		}
		defer c.Close()
	}
	var drained, start time.Time
	var base fakeprovider.Stats
	term := d.term(ctx)
	reports, err := d.runWorkers(ctx, mode, scope, d.duration, func(begin func() error) error {
		// The provider first, then the Budget: emptied later, the
		// cluster's bucket never holds more than the provider's.
		p.Spend(d.model, 0, d.tpm, 0)
		drained = time.Now()
		base = p.ModelStats(d.model)
		if c != nil {
			if err := d.emptyBudget(c, scope); err != nil {
				return err
			}
		}
		start = time.Now()
		return begin()
	}, nil)
	if err != nil {
		return demoRow{}, err
	}
	// The row's window: from the empty provider to the workers' deadline
	// (or the last one's end, if later), whether or not a goroutine gave
	// up earlier because the Budget could not admit it before then.
	row := demoRow{name: mode, reports: reports, elapsed: start.Add(d.duration).Sub(drained)}
	if after := d.term(ctx); after > term && term > 0 {
		row.elections = after - term
	}
	for _, rep := range reports {
		row.elapsed = max(row.elapsed, time.Unix(0, rep.End).Sub(drained))
	}
	st := p.ModelStats(d.model)
	st.Requests -= base.Requests
	st.RateLimited -= base.RateLimited
	st.ChargedTokens -= base.ChargedTokens
	row.stats = st
	return row, nil
}

// term returns the highest Raft term a node reports; 0 if none answers.
func (d *aiDemo) term(ctx context.Context) uint64 {
	var t uint64
	for _, st := range d.cluster.Admin().Status(ctx, proc.StatusTimeout) {
		if st.Err == nil {
			t = max(t, st.Status.GetTerm())
		}
	}
	return t
}

// dial connects to the cluster with the workers' certificate.
func (d *aiDemo) dial(ctx context.Context) (*client.Client, error) {
	return client.Dial(ctx, d.cluster.Endpoints(), client.WithTLS(d.app.Cert, d.app.Key, d.app.CA),
		client.WithLogger(slog.New(slog.DiscardHandler)))
}

// emptyBudget empties the token rule of scope's Budget in the cluster with
// one reservation of its whole burst, never settled (it stays spent; it
// counts as one call of the requests rule too). It must run before any
// worker reserves: it does not wait.
func (d *aiDemo) emptyBudget(c *client.Client, scope string) error {
	b := c.Budget(scope, demoRules(d.rpm, d.tpm)...)
	if _, err := b.TryReserve(client.Cost{InputTokens: d.tpm}); err != nil {
		return fmt.Errorf("empty the budget before the workers begin: %w", err)
	}
	return nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runWorkers runs d.workers worker processes with mode, calling for
// duration once told to begin, and returns their reports. Once they are
// started and have had d.margin to dial, ready runs with begin, which tells
// them all to begin calling (an error stops them); then during, if set, in
// this process.
func (d *aiDemo) runWorkers(ctx context.Context, mode, scope string, duration time.Duration,
	ready func(begin func() error) error, during func()) ([]workerReport, error) {
	d.starts++
	startFile := filepath.Join(d.dir, fmt.Sprintf("start-%d", d.starts))
	procs := make([]*proc.Process, d.workers)
	reports := make([]workerReport, d.workers)
	got := make([]bool, d.workers)
	var mu sync.Mutex
	for i := range procs {
		args := []string{"ai-demo-worker", "--mode", mode, "--provider", d.url, "--model", d.model,
			"--goroutines", strconv.Itoa(d.goroutines), "--duration", duration.String(),
			"--start-file", startFile,
			"--rpm", strconv.FormatInt(d.rpm, 10), "--tpm", strconv.FormatInt(d.tpm, 10),
			"--share", strconv.Itoa(d.workers), "--max-tokens", strconv.FormatInt(d.maxTokens, 10)}
		if mode == demoLeasehold {
			args = append(args, "--endpoints", strings.Join(d.cluster.Endpoints(), ","), "--scope", scope,
				"--ca", d.app.CA, "--cert", d.app.Cert, "--key", d.app.Key)
		}
		name := fmt.Sprintf("worker%d-%s", i+1, mode)
		procs[i] = proc.New(name, d.self, args, proc.Options{
			Log:       filepath.Join(d.dir, name+".log"),
			MayFinish: true,
			Stdout: func(line string) {
				var rep workerReport
				if json.Unmarshal([]byte(line), &rep) == nil {
					mu.Lock()
					reports[i], got[i] = rep, true
					mu.Unlock()
				}
			},
		})
	}
	stopAll := func() {
		for _, p := range procs {
			if p.PID() > 0 {
				_ = p.Stop(5 * time.Second)
			}
		}
	}
	defer stopAll()
	for _, p := range procs {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	if err := sleepUntil(ctx, time.Now().Add(d.margin)); err != nil {
		return nil, err
	}
	if err := ready(func() error { return os.WriteFile(startFile, nil, 0o600) }); err != nil {
		return nil, err
	}
	begun := time.Now()
	if during != nil {
		during()
	}
	// Every worker ends by itself after duration; give it that and a
	// margin, then stop it by PID.
	var errs []error
	wctx, cancel := context.WithDeadline(ctx, begun.Add(duration+30*time.Second))
	defer cancel()
	for _, p := range procs {
		if err := p.Wait(wctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (log %s)", p.Name(), err, p.LogPath()))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, ok := range got {
		if !ok && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("%s printed no report (log %s)", procs[i].Name(), procs[i].LogPath()))
		}
	}
	return reports, errors.Join(errs...)
}

// printRow prints one row's detail.
func (d *aiDemo) printRow(w io.Writer, r demoRow) {
	calls, ok, errs := r.calls()
	fmt.Fprintf(w, "%-12s provider: %6d requests, %5d answered 429, %9d tokens charged = %.2f of %d TPM over %v; calls: %d, %d ok, %d failed\n",
		r.name, r.stats.Requests, r.stats.RateLimited, r.stats.ChargedTokens, r.used(d.tpm), d.tpm, r.elapsed.Round(time.Millisecond),
		calls, ok, errs)
	if r.elections > 0 {
		also := ""
		if r.name == demoLeasehold {
			also = "; the Budget admits nothing while no node leads"
		}
		fmt.Fprintf(w, "%-12s the cluster held %d election(s) during the row: its nodes missed heartbeats (a starved machine?)%s\n",
			"", r.elections, also)
	}
	if r.name == demoLeasehold {
		p50, warm, waited := r.warmP50()
		fmt.Fprintf(w, "%-12s added latency (time in the RoundTripper before the send): p50 %v over %d calls reserved on warm leases; %d more waited for tokens\n",
			"", p50, warm, waited)
	}
}

// stopRun is the second run: the workers call through the guard, and a
// third of the way in an outside spender, not through Leasehold, leaves
// the provider owing half the run's length of refill (Exhaust: calls billed
// after they ran). The first 429 makes that process's guard Block the
// Budget for the provider's wait (and Lower it to the remaining 0), which
// the cluster replicates; the others stop when their leases end or their
// own calls are refused. It prints how long after the first 429 the last
// call of any worker reached the provider within that wait.
func (d *aiDemo) stopRun(ctx context.Context, w io.Writer) error {
	p, scope, err := d.fresh()
	if err != nil {
		return err
	}
	c, err := d.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var start, drained time.Time
	_, err = d.runWorkers(ctx, demoLeasehold, scope, d.stopFor, func(begin func() error) error {
		p.Spend(d.model, 0, d.tpm, 0) // the provider first, as in row
		if err := d.emptyBudget(c, scope); err != nil {
			return err
		}
		start = time.Now()
		return begin()
	}, func() {
		if sleepUntil(ctx, start.Add(d.stopFor/3)) != nil {
			return
		}
		drained = time.Now()
		d.provider.markFrom(drained)
		p.Exhaust(d.model, d.stopFor/2)
	})
	if err != nil {
		return err
	}
	first, wait, last, after, refused := d.provider.since()
	switch {
	case drained.IsZero():
		return errors.New("interrupted before the spend")
	case first.IsZero():
		fmt.Fprintln(w, "outside spender: no worker got a 429 (were they calling?)")
		return nil
	}
	stop := time.Duration(0)
	if after > 0 {
		stop = last.Sub(first)
	}
	verdict := "within Λ plus a round trip"
	if stop > demoLambda+100*time.Millisecond {
		verdict = "LATER than Λ plus a round trip"
	}
	fmt.Fprintf(w, "outside spender: the provider owes %v of refill; first 429 %v later, saying wait %v; in that wait %d more calls reached the provider (%d answered 429), the last %v after the first 429: all %d workers stopped %s (Λ = %v)\n",
		(d.stopFor / 2).Round(time.Millisecond), first.Sub(drained).Round(time.Microsecond), wait, after, refused,
		stop.Round(time.Microsecond), d.workers, verdict, demoLambda)
	return nil
}

// demoLambda is Λ, the cluster's default lease cap: the Budget's rules name
// no MaxLease.
const demoLambda = 2 * time.Second

// recorder serves the current fake provider and, once marked, records the
// first 429 after the mark and the calls that arrived in the wait it gave.
type recorder struct {
	p atomic.Pointer[fakeprovider.Provider]

	mu struct {
		sync.Mutex
		from    time.Time     // record from then; zero: not recording
		first   time.Time     // when the first 429 after from was answered
		wait    time.Duration // its retry-after-ms
		last    time.Time     // the last call that arrived in (first, first+wait)
		after   int64         // calls that arrived then
		refused int64         // of those, answered 429
	}
}

func (r *recorder) set(p *fakeprovider.Provider) {
	r.p.Store(p)
	r.mu.Lock()
	r.mu.from, r.mu.first, r.mu.wait, r.mu.last, r.mu.after, r.mu.refused = time.Time{}, time.Time{}, 0, time.Time{}, 0, 0
	r.mu.Unlock()
}

func (r *recorder) markFrom(t time.Time) {
	r.mu.Lock()
	r.mu.from = t
	r.mu.Unlock()
}

func (r *recorder) since() (first time.Time, wait time.Duration, last time.Time, after, refused int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.first, r.mu.wait, r.mu.last, r.mu.after, r.mu.refused
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	arrived := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	r.p.Load().ServeHTTP(sw, req)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.from.IsZero() || arrived.Before(r.mu.from) {
		return
	}
	if !r.mu.first.IsZero() && arrived.After(r.mu.first) && arrived.Before(r.mu.first.Add(r.mu.wait)) {
		r.mu.after++
		r.mu.last = arrived
		if sw.status == http.StatusTooManyRequests {
			r.mu.refused++
		}
	}
	if sw.status == http.StatusTooManyRequests && r.mu.first.IsZero() {
		// When the 429 left the provider, not when it arrived: the
		// fake answers after its latency.
		r.mu.first = time.Now()
		ms, _ := strconv.ParseInt(sw.Header().Get("Retry-After-Ms"), 10, 64)
		r.mu.wait = time.Duration(ms) * time.Millisecond
	}
}

// statusWriter notes the status a handler writes; it passes Flush on, for
// streams.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
