package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// A Decider makes rate-limit decisions for one simulated client process.
// Each worker goroutine owns one Decider; it need not be safe for concurrent
// use.
type Decider interface {
	// Allow decides one request for one token of key k (0 ≤ k < Keys). An
	// error means the decision could not be made; it ends the run.
	Allow(k int) (bool, error)
}

// Config is one load run: Clients workers, each calling its Decider in a
// closed loop, as fast as it answers (or once per Interval), for Duration.
type Config struct {
	// Clients is the number of workers (simulated client processes); ≥ 1.
	Clients int
	// Keys is the number of keys; worker i's j-th call goes to key
	// (i+j) mod Keys, so demand is spread evenly. 1 is the hot key. ≥ 1.
	Keys int
	// Duration is how long the workers run; > 0.
	Duration time.Duration
	// SampleEvery times one call in SampleEvery (a power of two; 1: every
	// call). Reading the clock twice costs about as much as a leased Allow,
	// so timing every call would measure the clock; sampling a fixed
	// stride keeps the distribution unbiased and the cost per call below a
	// nanosecond at 64.
	SampleEvery int
	// Progress, if set, is called about every ProgressEvery with the
	// decisions and admissions so far and the time since the start. It runs
	// on its own goroutine.
	Progress      func(decisions, admitted int64, elapsed time.Duration)
	ProgressEvery time.Duration
	// Interval paces each worker: one call per Interval, worker i starting
	// i·Interval/Clients after the others; a worker that falls behind (its
	// Decider is slower than Interval) goes on from the present rather
	// than bursting to catch up. 0: closed loop. Either way worker i starts
	// at key i and takes the keys in turn, so consecutive workers visit a
	// key one after the other: a key's demand comes in runs (8 paced
	// workers: 8 calls within 8 Intervals, then none for a cycle of the
	// keys; 512: each run of 64 goroutines at nearly the key's whole rate),
	// the shape issue 17 measured. A limiter that holds tokens one worker
	// will not use is caught; evenly spread calls would hide it.
	Interval time.Duration
	// Record keeps every call (key, when it was invoked and returned,
	// admitted or not) in Result.Calls, up to MaxRecorded calls in all, for
	// the spurious-denial count (Envelope.Spurious). Reading the clock
	// twice per call costs about as much as a leased Allow: leave it off
	// for closed-loop runs that measure the fast path.
	Record bool
}

// MaxRecorded bounds the calls a run records (Config.Record): 12 bytes
// each, 48 MB in all. A run that makes more keeps none (Result.Calls nil,
// Result.Unrecorded set).
const MaxRecorded = 4 << 20

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Clients < 1 {
		errs = append(errs, fmt.Errorf("clients %d: want at least 1", c.Clients))
	}
	if c.Keys < 1 {
		errs = append(errs, fmt.Errorf("keys %d: want at least 1", c.Keys))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration %v: want more than 0", c.Duration))
	}
	if s := c.SampleEvery; s < 1 || s&(s-1) != 0 {
		errs = append(errs, fmt.Errorf("sample-every %d: want a power of two", s))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval %v: want 0 (closed loop) or more", c.Interval))
	}
	return errors.Join(errs...)
}

// Result is what a run measured.
type Result struct {
	Decisions int64   // Allow calls answered: admitted + denied
	Admitted  int64   // Allow calls that returned true
	PerKey    []int64 // admitted per key
	// Elapsed spans from before any worker's first call to after every
	// worker's last call returned: every admission lies inside it.
	Elapsed time.Duration
	Latency *Histogram // sampled Allow latencies (see Config.SampleEvery)
	// Calls are the recorded calls (Config.Record), worker by worker, each
	// worker's in the order made; nil if not recorded.
	Calls []Call
	// Unrecorded: Config.Record was set but the run made more than
	// MaxRecorded calls, so none are kept.
	Unrecorded bool
}

// A Call is one recorded Allow: its key, whether it was admitted, and when
// it was invoked and returned, in whole microseconds since the run's start
// (Inv rounded down, Ret rounded up, so that [Inv, Ret] contains the call).
// 12 bytes, so that millions fit.
type Call struct {
	key uint32 // key index; the top bit set: admitted
	Inv uint32
	Ret uint32
}

const admittedBit = 1 << 31

// Key returns the call's key index.
func (c Call) Key() int { return int(c.key &^ admittedBit) }

// Admitted reports whether the call was admitted.
func (c Call) Admitted() bool { return c.key&admittedBit != 0 }

// NewCall returns a recorded call of key k over [inv, ret] µs.
func NewCall(k int, admitted bool, inv, ret uint32) Call {
	c := Call{key: uint32(k), Inv: inv, Ret: ret}
	if admitted {
		c.key |= admittedBit
	}
	return c
}

// DecisionsPerSecond returns Decisions / Elapsed.
func (r Result) DecisionsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Decisions) / r.Elapsed.Seconds()
}

// worker is one goroutine's tally, on its own cache lines so that workers do
// not slow each other down.
type worker struct {
	_         [64]byte
	decisions atomic.Int64 // published every publishEvery calls, for Progress
	admitted  atomic.Int64
	perKey    []int64
	hist      *Histogram
	start     time.Time // the run's start: recorded times count from it
	calls     []Call
	overflow  bool // more calls than its share of MaxRecorded
	err       error
	_         [64]byte
}

const publishEvery = 256

// Run runs deciders[i] on worker i (len(deciders) must be cfg.Clients) until
// cfg.Duration has passed or ctx ends, and returns what they did. A Decider's
// error stops every worker and is returned with the partial result. Run
// returns only after every worker has returned.
func Run(ctx context.Context, cfg Config, deciders []Decider) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	if len(deciders) != cfg.Clients {
		return Result{}, fmt.Errorf("%d deciders for %d clients", len(deciders), cfg.Clients)
	}
	if cfg.Keys > admittedBit {
		return Result{}, fmt.Errorf("%d keys: at most %d", cfg.Keys, admittedBit)
	}
	var stop atomic.Bool
	ws := make([]*worker, cfg.Clients)
	for i := range ws {
		ws[i] = &worker{perKey: make([]int64, cfg.Keys), hist: NewHistogram()}
	}
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			<-begin
			w.loop(deciders[i], i, cfg, &stop)
			if w.err != nil {
				stop.Store(true)
			}
		})
	}

	start := time.Now()
	for _, w := range ws {
		w.start = start
	}
	close(begin)
	timer := time.NewTimer(cfg.Duration)
	defer timer.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	var tick <-chan time.Time
	if cfg.Progress != nil && cfg.ProgressEvery > 0 {
		t := time.NewTicker(cfg.ProgressEvery)
		defer t.Stop()
		tick = t.C
	}
	var canceled error
wait:
	for {
		select {
		case <-timer.C:
			stop.Store(true)
		case <-ctx.Done():
			stop.Store(true)
			canceled = ctx.Err()
		case <-tick:
			var d, a int64
			for _, w := range ws {
				d += w.decisions.Load()
				a += w.admitted.Load()
			}
			cfg.Progress(d, a, time.Since(start))
		case <-done:
			break wait
		}
	}
	res := Result{Elapsed: time.Since(start), PerKey: make([]int64, cfg.Keys), Latency: NewHistogram()}
	var errs []error
	recorded := 0
	for _, w := range ws {
		recorded += len(w.calls)
		res.Unrecorded = res.Unrecorded || w.overflow
	}
	if cfg.Record && !res.Unrecorded {
		res.Calls = make([]Call, 0, recorded)
		for _, w := range ws {
			res.Calls = append(res.Calls, w.calls...)
		}
	}
	for i, w := range ws {
		res.Decisions += w.decisions.Load()
		res.Admitted += w.admitted.Load()
		for k, n := range w.perKey {
			res.PerKey[k] += n
		}
		res.Latency.Merge(w.hist)
		if w.err != nil {
			errs = append(errs, fmt.Errorf("client %d: %w", i, w.err))
		}
	}
	if canceled != nil || ctx.Err() != nil {
		// Interrupted: the workers' errors (a closed connection, a
		// deadline set to stop them) are consequences, not news.
		return res, ctx.Err()
	}
	return res, errors.Join(errs...)
}

func (w *worker) loop(d Decider, id int, cfg Config, stop *atomic.Bool) {
	mask := cfg.SampleEvery - 1
	k := id % cfg.Keys
	var decisions, admitted int64
	defer func() {
		w.decisions.Store(decisions)
		w.admitted.Store(admitted)
	}()
	limit := MaxRecorded / cfg.Clients
	var next time.Time
	if cfg.Interval > 0 {
		next = w.start.Add(cfg.Interval * time.Duration(id) / time.Duration(cfg.Clients))
	}
	for i := 0; !stop.Load(); i++ {
		if cfg.Interval > 0 {
			if !pace(next, stop) {
				return
			}
			next = next.Add(cfg.Interval)
			if now := time.Now(); next.Before(now.Add(-cfg.Interval)) {
				next = now // behind: go on from now, do not burst to catch up
			}
		}
		var ok bool
		var err error
		switch {
		case cfg.Record && !w.overflow:
			t0 := time.Now()
			ok, err = d.Allow(k)
			t1 := time.Now()
			if i&mask == 0 {
				w.hist.Record(t1.Sub(t0))
			}
			if len(w.calls) == limit {
				w.overflow, w.calls = true, nil
			} else {
				w.calls = append(w.calls, NewCall(k, ok, micros(t0.Sub(w.start), false), micros(t1.Sub(w.start), true)))
			}
		case i&mask == 0:
			t0 := time.Now()
			ok, err = d.Allow(k)
			w.hist.Record(time.Since(t0))
		default:
			ok, err = d.Allow(k)
		}
		if err != nil {
			w.err = err
			return
		}
		decisions++
		if ok {
			admitted++
			w.perKey[k]++
		}
		if k++; k == cfg.Keys {
			k = 0
		}
		if i%publishEvery == publishEvery-1 {
			w.decisions.Store(decisions)
			w.admitted.Store(admitted)
		}
	}
}

// pace sleeps until next, checking stop at least every 50ms; it reports
// false if stop was set.
func pace(next time.Time, stop *atomic.Bool) bool {
	for {
		if stop.Load() {
			return false
		}
		d := time.Until(next)
		if d <= 0 {
			return true
		}
		time.Sleep(min(d, 50*time.Millisecond))
	}
}

// micros returns d in whole microseconds, rounded down or (up) up, at most
// MaxUint32 (71 minutes).
func micros(d time.Duration, up bool) uint32 {
	us := d / time.Microsecond
	if up && d%time.Microsecond != 0 {
		us++
	}
	return uint32(min(max(us, 0), math.MaxUint32))
}
