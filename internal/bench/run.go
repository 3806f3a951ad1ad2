package bench

import (
	"context"
	"errors"
	"fmt"
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
// closed loop, as fast as it answers, for Duration.
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
}

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
	for i := 0; !stop.Load(); i++ {
		var ok bool
		var err error
		if i&mask == 0 {
			t0 := time.Now()
			ok, err = d.Allow(k)
			w.hist.Record(time.Since(t0))
		} else {
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
