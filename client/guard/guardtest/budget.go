// Package guardtest is test support for package guard: Budget, an in-memory
// guard.Budget that takes a reservation from all its limits or none, counts
// what it is told, and catches a reservation ended twice. It is not a rate
// limiter: its limits are totals, never refilled, which is what a test
// counting tokens wants.
package guardtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/leasehold/leasehold/client/guard"
)

// ErrEndedTwice is returned by Settle or Cancel on a reservation already
// settled or cancelled.
var ErrEndedTwice = errors.New("guardtest: reservation ended twice")

// ErrExceedsLimit is returned by Reserve for an estimate larger than a limit.
var ErrExceedsLimit = errors.New("guardtest: estimate exceeds a limit")

// Limits are a Budget's totals; zero is no limit.
type Limits struct {
	guard.Cost
	// InFlight bounds the reservations not yet settled or cancelled.
	InFlight int
}

// Block is one Block call.
type Block struct {
	Wait time.Duration
	At   time.Time
}

// Lower is one Lower call.
type Lower struct {
	Dim       guard.Dimension
	Remaining int64
	Reset     time.Duration
}

// Stats are a Budget's counters.
type Stats struct {
	// Reserved, Settled and Cancelled count reservations.
	Reserved, Settled, Cancelled int
	// EndedTwice counts Settle or Cancel calls on an ended reservation;
	// a correct guard never makes one.
	EndedTwice int
	// KeepAlives counts KeepAlive calls.
	KeepAlives int
	// InFlight is the reservations not yet ended.
	InFlight int
	// Held is what the budget holds now: reservations in flight at their
	// estimate plus settled charges.
	Held guard.Cost
	// Charged is the sum of Settle's actual costs.
	Charged guard.Cost
	// Settles lists Settle's actual costs in order.
	Settles []guard.Cost
	// Blocks and Lowers list those calls in order.
	Blocks []Block
	Lowers []Lower
}

// Budget is an in-memory guard.Budget. It is safe for concurrent use.
type Budget struct {
	limits Limits

	mu      sync.Mutex
	stats   Stats
	until   time.Time     // blocked until
	changed chan struct{} // closed and replaced whenever capacity frees
}

// New returns a Budget with limits.
func New(limits Limits) *Budget {
	return &Budget{limits: limits, changed: make(chan struct{})}
}

// Stats returns a copy of the counters.
func (b *Budget) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	s.Settles = append([]guard.Cost(nil), s.Settles...)
	s.Blocks = append([]Block(nil), s.Blocks...)
	s.Lowers = append([]Lower(nil), s.Lowers...)
	return s
}

// BlockedUntil returns the end of the latest block.
func (b *Budget) BlockedUntil() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.until
}

func over(limit, held, n int64) bool { return limit > 0 && held+n > limit }

// Reserve waits for the block to end and for every limit to have room, then
// takes estimate from all of them.
func (b *Budget) Reserve(ctx context.Context, estimate guard.Cost) (guard.Reservation, error) {
	l := b.limits
	if over(l.Requests, 0, estimate.Requests) || over(l.InputTokens, 0, estimate.InputTokens) ||
		over(l.OutputTokens, 0, estimate.OutputTokens) {
		return nil, fmt.Errorf("%w: %+v > %+v", ErrExceedsLimit, estimate, l.Cost)
	}
	for {
		b.mu.Lock()
		now := time.Now()
		h := b.stats.Held
		switch {
		case now.Before(b.until):
			wait := b.until.Sub(now)
			b.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
			continue
		case over(l.Requests, h.Requests, estimate.Requests) || over(l.InputTokens, h.InputTokens, estimate.InputTokens) ||
			over(l.OutputTokens, h.OutputTokens, estimate.OutputTokens) || l.InFlight > 0 && b.stats.InFlight >= l.InFlight:
			ch := b.changed
			b.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		b.stats.Reserved++
		b.stats.InFlight++
		b.stats.Held = add(b.stats.Held, estimate)
		b.mu.Unlock()
		return &reservation{b: b, estimate: estimate}, nil
	}
}

// Block records the call and blocks Reserve until wait from now, never
// shortening a longer block.
func (b *Budget) Block(_ context.Context, wait time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.stats.Blocks = append(b.stats.Blocks, Block{Wait: wait, At: now})
	if t := now.Add(wait); t.After(b.until) {
		b.until = t
	}
	return nil
}

// Lower records the call; the totals are not changed.
func (b *Budget) Lower(_ context.Context, dim guard.Dimension, remaining int64, reset time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stats.Lowers = append(b.stats.Lowers, Lower{Dim: dim, Remaining: remaining, Reset: reset})
	return nil
}

func add(a, b guard.Cost) guard.Cost {
	return guard.Cost{Requests: a.Requests + b.Requests, InputTokens: a.InputTokens + b.InputTokens,
		OutputTokens: a.OutputTokens + b.OutputTokens}
}

func sub(a, b guard.Cost) guard.Cost {
	return guard.Cost{Requests: a.Requests - b.Requests, InputTokens: a.InputTokens - b.InputTokens,
		OutputTokens: a.OutputTokens - b.OutputTokens}
}

type reservation struct {
	b        *Budget
	estimate guard.Cost
	ended    bool // under b.mu
}

// end ends r, or reports that it was ended already.
func (r *reservation) endLocked() error {
	if r.ended {
		r.b.stats.EndedTwice++
		return ErrEndedTwice
	}
	r.ended = true
	r.b.stats.InFlight--
	r.b.stats.Held = sub(r.b.stats.Held, r.estimate)
	close(r.b.changed)
	r.b.changed = make(chan struct{})
	return nil
}

func (r *reservation) Settle(_ context.Context, actual guard.Cost) error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	if err := r.endLocked(); err != nil {
		return err
	}
	r.b.stats.Settled++
	r.b.stats.Held = add(r.b.stats.Held, actual)
	r.b.stats.Charged = add(r.b.stats.Charged, actual)
	r.b.stats.Settles = append(r.b.stats.Settles, actual)
	return nil
}

func (r *reservation) Cancel() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	if err := r.endLocked(); err != nil {
		return err
	}
	r.b.stats.Cancelled++
	return nil
}

func (r *reservation) KeepAlive(context.Context) error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	r.b.stats.KeepAlives++
	return nil
}
