package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// WithReservationTTL sets how long a Budget's reservation keeps its leases
// without Settle, Cancel or KeepAlive: until then the Budget keeps the
// leases it took from alive in the cluster (so its unused tokens can be
// refunded and its InFlight slot stays held), after that it is charged as
// reserved and its slot comes back. Set it above the longest call, or call
// Reservation.KeepAlive while a call runs. Default 5 minutes; 1s to 1h.
func WithReservationTTL(d time.Duration) Option {
	return func(c *config) { c.reservationTTL = d }
}

// WithIdleTimeout makes the Client close and forget a Limiter or Budget
// that has been idle for d: no valid lease held, no reservation open, no
// caller waiting, and no request on its slow path for d. It is then as
// after its Close: it has left the Client's map, and later calls on it
// fail with ErrClosed (Allow returns false); Client.Limiter and
// Client.Budget make a new one. So a service with a Limiter or Budget per
// tenant, which gets them from the Client when it needs them rather than
// keeping them, holds memory for the tenants active within d only. Default
// 0: never. Checked every d/4.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) { c.idleTimeout = d }
}

// Close gives back l's unused tokens (a Release per live lease, at most the
// request timeout) and removes l from its Client, so that Client.Limiter
// makes a new Limiter for the key. Later calls on l fail with ErrClosed
// (Allow returns false); blocked Waits return ErrClosed. Calls after the
// first return nil.
func (l *Limiter) Close() error {
	if l.owner != nil {
		return errors.New("leasehold: the Limiter is a Budget's rule; close the Budget")
	}
	return l.close(false)
}

// close is Close; idle: the idle timeout forgets l.
func (l *Limiter) close(idle bool) error {
	l.c.mu.Lock()
	if l.c.mu.limiters[l.key] == l {
		delete(l.c.mu.limiters, l.key)
	}
	l.c.mu.Unlock()
	why := &closedError{what: fmt.Sprintf("limiter %q", l.key), idle: idle}
	return l.c.giveBack(l.shutdown(l.c.now(), why))
}

// Close gives back b's leases (each live lease's unused tokens and its
// reservations' InFlight slots, at most the request timeout) and removes b
// from its Client, so that Client.Budget makes a new Budget for the scope.
// Later Reserve, Block and Lower calls fail with ErrClosed. A reservation
// still open can still be settled: what it used beyond its reservation is
// charged, but nothing is refunded, and its Settle returns an error
// matching ErrExpired. Calls after the first return nil.
func (b *Budget) Close() error { return b.close(false) }

// close is Close; idle: the idle timeout forgets b.
func (b *Budget) close(idle bool) error {
	b.c.mu.Lock()
	if b.c.mu.budgets[b.scope] == b {
		delete(b.c.mu.budgets, b.scope)
	}
	b.c.mu.Unlock()
	why := &closedError{what: fmt.Sprintf("budget %q", b.scope), idle: idle}
	var rels []release
	for _, g := range b.shutdown(b.c.now(), why) {
		rels = append(rels, release{key: g.scope, id: g.id, items: g.unused})
	}
	return b.c.giveBack(rels)
}

// shutdown marks b and its rules closed and every lease dead, and returns
// the leases to give back. Blocked callers wake up to why (ErrClosed, or a
// closedError).
func (b *Budget) shutdown(now int64, why error) []groupRelease {
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return nil
	}
	b.mu.closed, b.mu.closeErr = true, why
	groups := make([]*leaseGroup, 0, len(b.mu.groups))
	for g := range b.mu.groups {
		groups = append(groups, g)
	}
	b.notifyLocked()
	b.mu.Unlock()
	for _, r := range b.rules {
		if l := r.lim; l != nil {
			l.mu.Lock()
			l.mu.closed, l.mu.closeErr = true, why
			l.fallbackEndedLocked(now)
			l.head.Store(nil)
			l.mu.leases = nil
			l.notifyLocked()
			l.mu.Unlock()
		}
	}
	return b.shutdownGroups(groups, now)
}

// giveBack releases rels, closeParallelism at a time, bounded by the request
// timeout.
func (c *Client) giveBack(rels []release) error {
	if len(rels) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.base, c.cfg.requestTimeout)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, closeParallelism)
	for _, r := range rels {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var err error
			if r.items != nil {
				err = c.releaseItems(ctx, r.id, r.items)
			} else {
				err = c.release(ctx, r.id, r.unused)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("lease %d of %q: %w", r.id, r.key, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// forgetIdle closes the Limiters and Budgets idle for the idle timeout,
// checking every quarter of it, until the Client closes. It runs on a
// goroutine the Client owns.
func (c *Client) forgetIdle() {
	d := int64(c.cfg.idleTimeout)
	t := time.NewTicker(max(c.cfg.idleTimeout/4, time.Millisecond))
	defer t.Stop()
	// refused is each Limiter's count of lock-free refusals at the last
	// look: a Limiter refusing on a remembered denial is in use.
	refused := make(map[*Limiter]int64)
	for {
		select {
		case <-c.closing:
			return
		case <-t.C:
		}
		c.mu.Lock()
		limiters := make([]*Limiter, 0, len(c.mu.limiters))
		for _, l := range c.mu.limiters {
			limiters = append(limiters, l)
		}
		budgets := make([]*Budget, 0, len(c.mu.budgets))
		for _, b := range c.mu.budgets {
			budgets = append(budgets, b)
		}
		c.mu.Unlock()
		now := c.now()
		for _, l := range limiters {
			total := l.refusedTotal()
			last, seen := refused[l]
			refused[l] = total
			if seen && total == last && l.idle(now, d) {
				delete(refused, l)
				if err := l.close(true); err != nil {
					c.log.Debug("leasehold: closing an idle limiter", "key", l.key, "err", err)
				}
			}
		}
		for l := range refused {
			if l.State() == StateClosed {
				delete(refused, l)
			}
		}
		for _, b := range budgets {
			if b.idle(now, d) {
				if err := b.close(true); err != nil {
					c.log.Debug("leasehold: closing an idle budget", "scope", b.scope, "err", err)
				}
			}
		}
	}
}

// idle reports whether l has been idle for d at now: no valid lease, no
// caller waiting, nothing in flight, no slow-path call for d.
func (l *Limiter) idle(now, d int64) bool {
	if l.refreshing.Load() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.mu.closed && l.heldLocked(now) == 0 && len(l.mu.needs) == 0 && len(l.mu.calls) == 0 &&
		!l.mu.sending && now-l.mu.sampledAt >= d && (l.mu.denied.until <= now || l.mu.denied.until == never)
}

// idle reports whether b has been idle for d at now: no lease held or kept,
// no caller waiting, nothing in flight, no slow-path reservation for d.
func (b *Budget) idle(now, d int64) bool {
	if b.refreshing.Load() || now-b.active.Load() < d {
		return false
	}
	b.mu.Lock()
	busy := b.mu.closed || len(b.mu.groups) > 0 || b.mu.waiting > 0 || b.mu.sig.sending || b.mu.fallbackSlots > 0
	b.mu.Unlock()
	if busy {
		return false
	}
	for _, r := range b.rules {
		if l := r.lim; l != nil {
			l.mu.Lock()
			held := l.heldLocked(now)
			l.mu.Unlock()
			if held > 0 {
				return false
			}
		}
	}
	return true
}

// closedError is what calls on a Limiter or Budget closed while its Client
// is open return: it names what closed and why, where ErrClosed's text
// ("client closed") would send the reader after the wrong thing, and it
// matches ErrClosed.
type closedError struct {
	what string // `budget "scope"`, `limiter "key"`
	idle bool   // forgotten after the idle timeout, rather than closed by Close
}

func (e *closedError) Error() string {
	if e.idle {
		return fmt.Sprintf("leasehold: %s closed: idle for the Client's idle timeout (WithIdleTimeout); get it again from the Client", e.what)
	}
	return fmt.Sprintf("leasehold: %s closed", e.what)
}

// Is makes errors.Is(err, ErrClosed) hold.
func (e *closedError) Is(target error) bool { return target == ErrClosed }
