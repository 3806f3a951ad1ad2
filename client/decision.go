package client

import (
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// A Decision is a Limiter's answer to one request, with what a server needs
// to answer its own caller: whether it was admitted, and if not when to
// retry (an HTTP 429's Retry-After); and about how much is left (a
// RateLimit-Remaining header). It is x/time/rate's Reservation.Delay for a
// limit shared with other processes.
type Decision struct {
	// Allowed reports whether the tokens were spent.
	Allowed bool
	// RetryAfter is, when not allowed, how long until the same request
	// could be admitted, as far as this process knows: the cluster's
	// retry-after, a contended lease's pace, or the fallback share's
	// refill. A lower bound: other clients may take the tokens first. 0
	// when not known (the cluster is unreachable and the failure policy
	// refused, or it refused the key in a way an operator can lift, and
	// it is asked again every 15–30 s); negative when never (more than the
	// limit's burst, an invalid key, a closed Limiter). 0 when allowed.
	RetryAfter time.Duration
	// Remaining estimates the tokens the key could still admit now: what
	// this process holds on its first valid lease plus what the key held at
	// the cluster's last answer. An estimate for headers, not a promise.
	Remaining int64
}

// TakeN is AllowN with its reasons: it spends n tokens if it can, exactly
// as AllowN does (no lock, no allocation while a lease holds them), and
// says when to retry if it cannot.
func (l *Limiter) TakeN(n int64) Decision {
	if l.AllowN(n) {
		return Decision{Allowed: true, Remaining: l.remaining(l.c.now())}
	}
	return l.refusal(n)
}

// remaining estimates the tokens the key could admit at now.
func (l *Limiter) remaining(now int64) int64 {
	var held int64
	if ls := l.head.Load(); ls != nil {
		held = ls.usable(now)
	}
	return held + max(0, l.stock.Load())
}

// refusal says why a request of n was just refused.
func (l *Limiter) refusal(n int64) Decision {
	now := l.c.now()
	d := Decision{Remaining: l.remaining(now)}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case n < 0, l.mu.closed, l.mu.err != nil && l.mu.retryAt == never, n > l.maxGrant:
		d.RetryAfter = -1
		return d
	case l.mu.err != nil:
		return d // asked again later (askAgainLocked): not known
	}
	if den := l.mu.denied; n >= den.count && now < den.until {
		if den.until == never {
			d.RetryAfter = -1
		} else {
			d.RetryAfter = time.Duration(den.until - now)
		}
		return d
	}
	if l.mu.unreachable && l.mu.share != nil && l.mu.fallbackSince >= 0 {
		if c := l.mu.share.Check(l.mu.shareState, now, n); !c.Allowed && c.RetryAfter != limiter.Never {
			d.RetryAfter = c.RetryAfter
		}
	}
	return d
}
