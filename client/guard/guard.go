package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// ErrResponseTimeout is the error of an attempt that got no response
// headers within Config.ResponseHeaderTimeout.
var ErrResponseTimeout = errors.New("guard: no response headers in time")

// Guard is an http.RoundTripper that guards calls to an AI provider with a
// shared budget. It is safe for concurrent use.
type Guard struct {
	cfg      Config
	fallback *url.URL
	clock    clock
	log      *slog.Logger

	mu struct {
		sync.Mutex
		routes map[routeKey]*route
	}
}

// clock is the guard's time and randomness, a seam for tests (as x/time/rate
// passes a timer factory to its wait).
type clock struct {
	now       func() time.Time
	sleep     func(ctx context.Context, d time.Duration) error
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	// float64 is uniform in [0, 1): full jitter and the canary's share.
	float64 func() float64
}

func realClock() clock {
	return clock{
		now: time.Now,
		sleep: func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		},
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
		float64:   rand.Float64,
	}
}

// New returns a Guard for cfg, or the problems Validate finds.
func New(cfg Config) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	g := &Guard{cfg: cfg, clock: realClock(), log: cfg.Logger}
	if cfg.Fallback.URL != "" {
		g.fallback, _ = url.Parse(cfg.Fallback.URL) // Validate parsed it
	}
	g.mu.routes = make(map[routeKey]*route)
	return g, nil
}

// RoundTrip sends req. A POST to …/chat/completions, …/responses or
// …/messages whose body is JSON with a model is guarded: reserved, sent
// (retried, routed by the breaker), and settled when its response body ends
// or is closed. Anything else is passed to Config.Transport untouched.
func (g *Guard) RoundTrip(req *http.Request) (*http.Response, error) {
	api, ok := apiFor(req)
	if !ok || req.Body == nil || req.Body == http.NoBody {
		return g.cfg.Transport.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("guard: read request body: %w", err)
	}
	c, ok := g.parseCall(api, body)
	if !ok {
		r := req.Clone(req.Context())
		setBody(r, body)
		return g.cfg.Transport.RoundTrip(r)
	}
	return g.do(req, &c)
}

func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
}

// do runs the attempts of one call.
func (g *Guard) do(req *http.Request, c *call) (*http.Response, error) {
	ctx := req.Context()
	host := req.URL.Host
	for attempt := 1; ; attempt++ {
		last := attempt >= g.cfg.MaxAttempts
		fallback, done, err := g.pick(host, c.model)
		if err != nil {
			return nil, err
		}
		target := Call{API: c.api, Host: host, Model: c.model, Stream: c.stream, Fallback: fallback}
		if fallback {
			target.Host = g.fallback.Host
		}
		budget := g.cfg.Budget(target)
		var res Reservation
		if budget != nil {
			if res, err = budget.Reserve(ctx, c.estimate); err != nil {
				done(outcomeNeutral, 0)
				return nil, fmt.Errorf("guard: reserve for %s: %w", c.model, err)
			}
		}

		start := g.clock.now()
		resp, cancelAttempt, err := g.send(req, c, fallback)
		latency := g.clock.now().Sub(start)

		if err != nil {
			g.cancel(res)
			if ctx.Err() != nil {
				// The caller's deadline passing on a call in flight is
				// a timeout; the caller cancelling is not ill health.
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					done(outcomeFailure, latency)
				} else {
					done(outcomeNeutral, latency)
				}
				return nil, err
			}
			done(outcomeFailure, latency)
			if last {
				return nil, err
			}
			if err := g.clock.sleep(ctx, g.backoff(attempt)); err != nil {
				return nil, err
			}
			continue
		}

		if budget != nil {
			g.lower(ctx, budget, resp.Header)
		}
		status := resp.StatusCode
		shouldRetry := resp.Header.Get("X-Should-Retry")
		switch {
		case status >= 200 && status < 300:
			done(outcomeSuccess, latency)
			resp.Body = g.newBody(ctx, resp, c, res, cancelAttempt)
			return resp, nil

		case status == http.StatusTooManyRequests:
			done(outcomeNeutral, latency)
			wait, hinted := retryHint(resp.Header, g.clock.now())
			if !hinted {
				wait = g.backoff(attempt)
			}
			if budget != nil && wait > 0 {
				if err := budget.Block(ctx, wait); err != nil {
					g.log.Warn("guard: block budget", "model", c.model, "wait", wait, "err", err)
				}
			}
			g.cancel(res)
			if last || shouldRetry == "false" || pastDeadline(ctx, g.clock.now().Add(wait)) {
				return noRetry(resp, cancelAttempt), nil
			}
			discard(resp, cancelAttempt)
			if err := g.clock.sleep(ctx, wait); err != nil {
				return nil, err
			}

		case status == http.StatusRequestTimeout || status == http.StatusConflict || status >= 500 || shouldRetry == "true":
			if status == http.StatusRequestTimeout || status >= 500 {
				done(outcomeFailure, latency)
			} else {
				done(outcomeNeutral, latency)
			}
			g.cancel(res)
			if last || shouldRetry == "false" {
				return noRetry(resp, cancelAttempt), nil
			}
			wait := g.backoff(attempt)
			if hint, ok := retryHint(resp.Header, g.clock.now()); ok {
				wait = max(wait, hint)
			}
			if pastDeadline(ctx, g.clock.now().Add(wait)) {
				return noRetry(resp, cancelAttempt), nil
			}
			discard(resp, cancelAttempt)
			if err := g.clock.sleep(ctx, wait); err != nil {
				return nil, err
			}

		default:
			// Another 4xx (a bad request, auth): not served, not ill health.
			done(outcomeSuccess, latency)
			g.cancel(res)
			resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancelAttempt}
			return resp, nil
		}
	}
}

// send makes one attempt: a clone of req with the call's body, to the
// primary or the fallback, with a timeout on the response headers. The
// returned cancel ends the attempt's context; the caller calls it when the
// response body is done.
func (g *Guard) send(req *http.Request, c *call, fallback bool) (*http.Response, func(), error) {
	actx, cancel := context.WithCancelCause(req.Context())
	r := req.Clone(actx)
	setBody(r, c.body)
	if fallback {
		u := *r.URL
		u.Scheme, u.Host = g.fallback.Scheme, g.fallback.Host
		r.URL, r.Host = &u, ""
		if g.cfg.Fallback.Rewrite != nil {
			g.cfg.Fallback.Rewrite(r)
		}
	}
	stop := g.clock.afterFunc(g.cfg.ResponseHeaderTimeout, func() { cancel(ErrResponseTimeout) })
	resp, err := g.cfg.Transport.RoundTrip(r)
	stop()
	if err != nil {
		if errors.Is(context.Cause(actx), ErrResponseTimeout) && req.Context().Err() == nil {
			err = fmt.Errorf("%w (%v): %w", ErrResponseTimeout, g.cfg.ResponseHeaderTimeout, err)
		}
		cancel(nil)
		return nil, nil, err
	}
	return resp, func() { cancel(nil) }, nil
}

// backoff is attempt's full-jitter wait: uniform in
// [0, min(BackoffMax, BackoffBase·2^(attempt−1))].
func (g *Guard) backoff(attempt int) time.Duration {
	ceil := g.cfg.BackoffMax
	if attempt-1 < 62 {
		if d := g.cfg.BackoffBase << (attempt - 1); d > 0 && d < ceil {
			ceil = d
		}
	}
	return time.Duration(g.clock.float64() * float64(ceil))
}

func pastDeadline(ctx context.Context, t time.Time) bool {
	d, ok := ctx.Deadline()
	return ok && t.After(d)
}

// noRetry marks a response the guard gives up on with x-should-retry: false,
// so a provider SDK above it does not multiply the guard's attempts by its
// own.
func noRetry(resp *http.Response, cancel func()) *http.Response {
	resp.Header.Set("X-Should-Retry", "false")
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp
}

// discard drains a little of a response the guard retries, so the
// connection can be reused, and closes it.
func discard(resp *http.Response, cancel func()) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
	cancel()
}

// cancel gives a reservation back.
func (g *Guard) cancel(res Reservation) {
	if res == nil {
		return
	}
	if err := res.Cancel(); err != nil {
		g.log.Warn("guard: cancel reservation", "err", err)
	}
}

// lower passes a response's remaining headers to the budget.
func (g *Guard) lower(ctx context.Context, b Budget, h http.Header) {
	for _, l := range rateLimits(h, g.clock.now()) {
		if !l.hasRemaining {
			continue
		}
		if err := b.Lower(ctx, l.dim, l.remaining, l.reset); err != nil {
			g.log.Warn("guard: lower budget", "dim", l.dim.String(), "remaining", l.remaining, "err", err)
		}
	}
}

// cancelBody ends the attempt's context when the body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
