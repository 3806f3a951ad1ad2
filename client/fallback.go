package client

import (
	"context"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/leasehold/leasehold/limiter"
	"github.com/leasehold/leasehold/transport"
)

// fallback applies the failure policy to a request of n tokens while the
// cluster is unreachable and nothing valid is held. It is called with l.mu
// held and returns with it released. done false means "try again".
func (l *Limiter) fallback(ctx context.Context, n, now int64, wait bool) (done bool, err error) {
	if l.mu.fallbackSince < 0 {
		l.mu.fallbackSince = now
		if l.mu.share != nil {
			// The share starts empty (see DESIGN.md).
			l.mu.shareState = limiter.BucketState{TAT: now + int64(l.mu.share.Cost(l.mu.share.Burst()))}
		}
		what := "leasehold: cluster unreachable and no valid lease left; following the failure policy"
		if errors.Is(l.mu.failErr, transport.ErrFull) {
			what = "leasehold: the cluster is full and refuses this key or client, and no valid lease is left; following the failure policy"
		}
		l.c.log.Warn(what, "key", l.key, "policy", l.policy, "err", l.mu.failErr)
	}
	retryAt := int64(-1) // when the share admits n; -1: not at all
	switch p := l.policy.(type) {
	case FailMode:
		if p == FailOpen {
			l.mu.used += n
			l.mu.Unlock()
			l.c.stats.add(statFallback, uint64(n))
			l.c.trace.admit(l.key, n, 0, AdmitFallback)
			l.kick(now)
			return true, nil
		}
	case FallbackShare:
		if end := l.mu.fallbackSince + int64(p.For); now < end && l.mu.share != nil {
			d := l.mu.share.Take(&l.mu.shareState, now, n)
			if d.Allowed {
				l.mu.used += n
				l.mu.Unlock()
				l.c.stats.add(statFallback, uint64(n))
				l.c.trace.admit(l.key, n, 0, AdmitFallback)
				l.kick(now)
				return true, nil
			}
			if d.RetryAfter != limiter.Never && now+int64(d.RetryAfter) < end {
				retryAt = now + int64(d.RetryAfter)
			}
		}
	}
	if !wait {
		l.mu.used += n
		l.mu.Unlock()
		l.kick(now)
		return true, errUnreachable
	}
	if retryAt >= 0 {
		l.mu.Unlock()
		l.kick(now)
		if err := l.sleepUntil(ctx, now, retryAt); err != nil {
			return true, err
		}
		return false, nil
	}
	// Closed: wait for the cluster to come back. A refresh retries in the
	// background meanwhile (a central Limiter's probes with a lease
	// request; see refresh), once the backoff has passed: kick, not start,
	// as a waiter woken by the failure of one refresh would otherwise
	// start the next at once, past the backoff. It wakes at notBefore to
	// kick one itself if none runs.
	ch := l.mu.changed
	wake := int64(never)
	if nb := l.notBefore.Load(); nb > now {
		wake = nb - now
	}
	l.mu.needs = append(l.mu.needs, n)
	l.mu.Unlock()
	l.kick(now)
	err = waitChange(ctx, ch, wake)
	l.mu.Lock()
	if i := slices.Index(l.mu.needs, n); i >= 0 {
		l.mu.needs = slices.Delete(l.mu.needs, i, i+1)
	}
	if err != nil {
		err = l.unavailableLocked(err)
	}
	l.mu.Unlock()
	if err != nil {
		return true, err
	}
	return false, nil
}

// shareBucket returns the local bucket of a FallbackShare: Rate per
// Per·clients, burst/clients (at least 1); nil if that cannot be built.
func shareBucket(limit Limit, clients int) *limiter.TokenBucket {
	period := limit.Per
	if int64(clients) > math.MaxInt64/int64(period) {
		return nil
	}
	period *= time.Duration(clients)
	b, err := limiter.NewTokenBucket(limit.Rate, period, max(1, limit.burst()/int64(clients)))
	if err != nil {
		return nil
	}
	return &b
}
