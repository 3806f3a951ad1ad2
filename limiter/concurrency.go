package limiter

import "fmt"

// Concurrency allows at most Max units to be held at once; a unit is held from
// Take until Return. It does not depend on time: who returns what, and when, is
// the caller's business (package fsm returns a lease's units when the lease is
// released or expires).
//
// A Concurrency is an immutable value, safe for concurrent use. The state it
// operates on is the caller's and is not synchronised.
type Concurrency struct {
	max int64
}

// ConcurrencyState is the mutable state of one concurrency limit. The zero value
// holds nothing.
type ConcurrencyState struct {
	// Held is the number of units currently held, 0..Max.
	Held int64
}

// NewConcurrency returns a limit of at most maxHeld units held at once.
func NewConcurrency(maxHeld int64) (Concurrency, error) {
	if maxHeld < 0 {
		return Concurrency{}, fmt.Errorf("%w: concurrency %d must not be negative", ErrInvalidLimit, maxHeld)
	}
	return Concurrency{max: maxHeld}, nil
}

// Max returns the most units that may be held at once.
func (c Concurrency) Max() int64 { return c.max }

// Check reports what Take(s, n) would decide, without changing s.
//
// A denial's RetryAfter is Never when n > Max, and zero otherwise: when units
// come back depends on their holders, which the limit does not know.
func (c Concurrency) Check(s ConcurrencyState, n int64) Decision {
	free := max(c.max-s.Held, 0)
	d := Decision{Remaining: free}
	switch {
	case n < 0 || n > c.max:
		d.RetryAfter = Never
	case n <= free:
		d.Allowed = true
		d.Remaining -= n
	}
	return d
}

// Take holds n more units if they are free.
func (c Concurrency) Take(s *ConcurrencyState, n int64) Decision {
	d := c.Check(*s, n)
	if d.Allowed {
		s.Held += n
	}
	return d
}

// Return gives back n held units; more than are held is clamped.
func (c Concurrency) Return(s *ConcurrencyState, n int64) {
	if n > 0 {
		s.Held = max(s.Held-n, 0)
	}
}
