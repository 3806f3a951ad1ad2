package guard

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrBreakerOpen is the error of a call refused because the breaker of its
// host and model is open and no fallback takes it. Test with errors.Is; the
// error is a *BreakerOpenError.
var ErrBreakerOpen = errors.New("guard: circuit breaker open")

// BreakerOpenError is a call refused by an open breaker.
type BreakerOpenError struct {
	// Host and Model name the breaker.
	Host, Model string
}

func (e *BreakerOpenError) Error() string {
	return fmt.Sprintf("guard: circuit breaker open for %s model %q", e.Host, e.Model)
}

// Unwrap returns ErrBreakerOpen.
func (e *BreakerOpenError) Unwrap() error { return ErrBreakerOpen }

// BreakerState is a breaker's state. Values start at 1.
type BreakerState uint8

const (
	BreakerClosed BreakerState = iota + 1
	BreakerHalfOpen
	BreakerOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// FallbackState is where a host and model's fallback stands. Values start
// at 1.
type FallbackState uint8

const (
	// FallbackIdle: the primary serves, or no fallback is configured.
	FallbackIdle FallbackState = iota + 1
	// FallbackCanary: the breaker is open and a share of its calls try the
	// fallback.
	FallbackCanary
	// FallbackPromoted: the fallback passed its canary and takes every call
	// the open breaker refuses.
	FallbackPromoted
	// FallbackRolledBack: the fallback crossed a threshold and gets no
	// calls until Fallback.RollbackFor has passed.
	FallbackRolledBack
)

func (s FallbackState) String() string {
	switch s {
	case FallbackIdle:
		return "idle"
	case FallbackCanary:
		return "canary"
	case FallbackPromoted:
		return "promoted"
	case FallbackRolledBack:
		return "rolled-back"
	}
	return "unknown"
}

// State is a snapshot of one host and model's breaker and fallback.
type State struct {
	Breaker  BreakerState
	Fallback FallbackState
}

// outcome is what an attempt tells its breaker or canary.
type outcome uint8

const (
	outcomeSuccess outcome = iota + 1
	// outcomeFailure: a 5xx, 408, timeout or connection error.
	outcomeFailure
	// outcomeNeutral: a 429, a 409 or a cancelled context, which say
	// nothing about the provider's health.
	outcomeNeutral
)

var (
	errTrip    = errors.New("guard: provider failure")
	errNeutral = errors.New("guard: neutral outcome")
)

type routeKey struct{ host, model string }

// route is one host and model's breaker and its fallback's record.
type route struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	mu struct {
		sync.Mutex
		state   FallbackState
		until   time.Time // end of a rollback
		samples []sample  // ring of the last CanarySamples fallback calls
		next    int
	}
}

type sample struct {
	latency time.Duration
	failed  bool
}

func (g *Guard) route(host, model string) *route {
	k := routeKey{host, model}
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.mu.routes[k]; r != nil {
		return r
	}
	r := &route{}
	r.mu.state = FallbackIdle
	r.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        host + " " + model,
		MaxRequests: g.cfg.Breaker.HalfOpenProbes,
		Timeout:     g.cfg.Breaker.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= g.cfg.Breaker.ConsecutiveFailures
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errNeutral) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			g.log.Info("guard: breaker state", "breaker", name, "from", from.String(), "to", to.String())
			if to == gobreaker.StateClosed {
				r.resetFallback()
			}
		},
	})
	g.mu.routes[k] = r
	return r
}

func (r *route) resetFallback() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.state = FallbackIdle
	r.mu.samples = r.mu.samples[:0]
	r.mu.next = 0
}

// pick chooses where an attempt goes. done reports the attempt's outcome and
// time to headers to the breaker (primary) or the fallback's record.
func (g *Guard) pick(host, model string) (fallback bool, done func(outcome, time.Duration), err error) {
	r := g.route(host, model)
	cbDone, cbErr := r.cb.Allow()
	if cbErr == nil {
		return false, func(o outcome, _ time.Duration) {
			switch o {
			case outcomeSuccess:
				cbDone(nil)
			case outcomeFailure:
				cbDone(errTrip)
			default:
				cbDone(errNeutral)
			}
		}, nil
	}
	refused := &BreakerOpenError{Host: host, Model: model}
	if g.fallback == nil {
		return false, nil, refused
	}
	now := g.clock.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.mu.state {
	case FallbackIdle:
		r.mu.state = FallbackCanary
		g.log.Info("guard: fallback canary", "host", host, "model", model, "fallback", g.fallback.Host)
	case FallbackRolledBack:
		if now.Before(r.mu.until) {
			return false, nil, refused
		}
		r.mu.state = FallbackCanary
		r.mu.samples, r.mu.next = r.mu.samples[:0], 0
		g.log.Info("guard: fallback canary again", "host", host, "model", model)
	}
	if r.mu.state == FallbackCanary && g.clock.float64() >= g.cfg.Fallback.CanaryShare {
		return false, nil, refused
	}
	return true, func(o outcome, latency time.Duration) {
		if o == outcomeNeutral {
			return
		}
		r.record(g, host, model, sample{latency: latency, failed: o == outcomeFailure})
	}, nil
}

// record adds a fallback call to the window and promotes or rolls back.
func (r *route) record(g *Guard, host, model string, s sample) {
	n := g.cfg.Fallback.CanarySamples
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.state != FallbackCanary && r.mu.state != FallbackPromoted {
		return // rolled back or reset since this call was routed
	}
	if len(r.mu.samples) < n {
		r.mu.samples = append(r.mu.samples, s)
	} else {
		r.mu.samples[r.mu.next] = s
	}
	r.mu.next = (r.mu.next + 1) % n
	failed := 0
	lat := make([]time.Duration, 0, len(r.mu.samples))
	for _, s := range r.mu.samples {
		if s.failed {
			failed++
		} else {
			lat = append(lat, s.latency)
		}
	}
	rate := float64(failed) / float64(len(r.mu.samples))
	var p99 time.Duration
	if len(lat) > 0 {
		slices.Sort(lat)
		p99 = lat[(len(lat)*99+99)/100-1]
	}
	// More failures than a full window may hold, or a p99 over the
	// threshold, roll back at once; a full window within both promotes.
	if float64(failed) > g.cfg.Fallback.MaxErrorRate*float64(n) || g.cfg.Fallback.MaxP99 > 0 && p99 > g.cfg.Fallback.MaxP99 {
		r.mu.state = FallbackRolledBack
		r.mu.until = g.clock.now().Add(g.cfg.Fallback.RollbackFor)
		r.mu.samples, r.mu.next = r.mu.samples[:0], 0
		g.log.Warn("guard: fallback rolled back", "host", host, "model", model,
			"error_rate", rate, "p99", p99, "for", g.cfg.Fallback.RollbackFor)
		return
	}
	if r.mu.state == FallbackCanary && len(r.mu.samples) == n {
		r.mu.state = FallbackPromoted
		g.log.Info("guard: fallback promoted", "host", host, "model", model, "error_rate", rate, "p99", p99)
	}
}

// State returns the breaker and fallback state of host and model; a pair
// never called is closed and idle.
func (g *Guard) State(host, model string) State {
	g.mu.Lock()
	r := g.mu.routes[routeKey{host, model}]
	g.mu.Unlock()
	if r == nil {
		return State{Breaker: BreakerClosed, Fallback: FallbackIdle}
	}
	var b BreakerState
	switch r.cb.State() {
	case gobreaker.StateOpen:
		b = BreakerOpen
	case gobreaker.StateHalfOpen:
		b = BreakerHalfOpen
	default:
		b = BreakerClosed
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return State{Breaker: b, Fallback: r.mu.state}
}
