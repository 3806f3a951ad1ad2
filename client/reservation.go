package client

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"

	"github.com/leasehold/leasehold/transport"
)

// ErrExpired: KeepAlive, Settle or Cancel came too late. The reservation's
// lease ended (its TTL passed without a KeepAlive, the cluster lost it, or
// its Budget was closed), so its unused tokens can no longer be given back
// (they stay charged) and its InFlight slot is no longer held. Settle still
// charges what the call used beyond its reservation; its error says how
// many tokens of each rule were not given back.
var ErrExpired = errors.New("leasehold: reservation expired")

// ErrNoReservation: Settle, Cancel or KeepAlive of the zero Reservation.
var ErrNoReservation = errors.New("leasehold: no reservation")

// A Reservation is what Budget.Reserve took for one call: a small handle,
// passed by value, to end with Settle or Cancel. Ending it twice is
// harmless: the second Settle or Cancel does nothing (a retried Settle
// charges once), even after the Budget has reused the handle's record for
// another reservation, which a generation in the handle tells apart.
//
// A Reservation that is never settled is charged as reserved: its tokens
// stay spent, and its InFlight slot comes back when its TTL
// ([WithReservationTTL], pushed back by KeepAlive) has passed and its
// lease has expired. Its methods are safe for concurrent use.
type Reservation struct {
	rec *reservation
	gen uint64
}

// The phases of a reservation record, in the low bits of its state; the
// rest is its generation.
const (
	phaseOpen    = 0 // reserved, not ended
	phaseEnding  = 1 // a Settle or Cancel is doing its local part
	phasePending = 2 // ended; its requests to the cluster are in flight (job)
	phaseBits    = 2
)

// reservation is the record behind a Reservation, pooled per Budget.
type reservation struct {
	b *Budget
	// state is gen<<phaseBits | phase. A record is reused with gen+1 once
	// ended and its requests answered; one whose requests failed is never
	// reused, so that every retried Settle finds its error.
	state atomic.Uint64
	// takes are what each rule gave, by rule index: from a pool lease (a
	// stripe of one of the rule's leases), from the reservation's own lease
	// (group), or nothing.
	takes [transport.MaxItems]take
	// group is the reservation's own lease: its central rules' tokens and
	// its InFlight slot; nil if it has none.
	group *leaseGroup
	// keepUntil is when the keeper stops renewing the leases this
	// reservation took from (Client clock): its reservation time plus the
	// TTL, pushed back by KeepAlive.
	keepUntil atomic.Int64
	// fallbackSlot: an InFlight rule's FallbackShare admitted it (no
	// slot held in the cluster); ending it gives the local slot back.
	fallbackSlot bool
	job          atomic.Pointer[settleJob]
}

// part is what a reservation took from one lease for one rule: n tokens,
// from stripe s of lease ls (nil s: taken with no lease to refund into).
type part struct {
	s  *stripe
	ls *lease
	n  int64
}

// maxParts is the most leases one rule of a reservation takes from: refunds
// into the leases tokens came from leave a rule's tokens spread over a few
// leases, none of which may hold a whole reservation.
const maxParts = 4

// take is what one rule of a reservation took, from up to maxParts leases.
// pool: the leases are the rule's shared leases, whose open counts include
// this reservation (one per part).
type take struct {
	parts [maxParts]part
	np    int
	pool  bool
	// policy: the rule's failure policy admitted it while the cluster was
	// unreachable; settling it charges nothing (the policy's share is
	// what bounds it).
	policy bool
}

func (t *take) add(p part) {
	t.parts[t.np] = p
	t.np++
}

// total returns the tokens taken.
func (t *take) total() int64 {
	var n int64
	for _, p := range t.parts[:t.np] {
		n += p.n
	}
	return n
}

// refund gives k of the taken tokens back to the leases they came from,
// the lease with the latest deadline first (its tokens can be spent again
// the longest), and returns how many of them were lost. Into a lease that
// died meanwhile, the Add is absorbed (see dead): those tokens are charged
// as reserved.
func (t *take) refund(k int64) (lost int64) {
	for k > 0 {
		best := -1
		for j, p := range t.parts[:t.np] {
			if p.s != nil && p.n > 0 && (best < 0 || p.ls.deadline > t.parts[best].ls.deadline) {
				best = j
			}
		}
		if best < 0 {
			return lost
		}
		p := &t.parts[best]
		r := min(k, p.n)
		if p.s.tokens.Add(r) < 0 {
			lost += r
		}
		p.n -= r
		k -= r
	}
	return lost
}

// leaseGone reports whether a lease rec took from has ended, or will
// without renewal: its unused tokens can no longer be given back, and its
// InFlight slot is no longer held. Call it with rec held (ending).
func (rec *reservation) leaseGone() bool {
	if g := rec.group; g != nil && g.gone.Load() {
		return true
	}
	for i := range rec.takes[:len(rec.b.rules)] {
		t := &rec.takes[i]
		for _, p := range t.parts[:t.np] {
			if p.ls != nil && p.ls.group != nil && p.ls.group.gone.Load() {
				return true
			}
		}
	}
	return false
}

// end takes the reservation out of its pool leases' open counts.
func (t *take) end() {
	if !t.pool {
		return
	}
	for _, p := range t.parts[:t.np] {
		p.s.open.Add(-1)
	}
}

// get returns a record for a new reservation and its generation.
func (b *Budget) get() (*reservation, uint64) {
	rec := b.records.Get().(*reservation)
	return rec, rec.state.Load() >> phaseBits
}

// recycle clears rec and puts it back in the pool for generation gen+1.
func (rec *reservation) recycle(gen uint64) {
	clear(rec.takes[:len(rec.b.rules)])
	rec.group = nil
	rec.fallbackSlot = false
	if rec.job.Load() != nil {
		rec.job.Store(nil)
	}
	rec.state.Store((gen + 1) << phaseBits)
	rec.b.records.Put(rec)
}

// begin moves r from open to ending, and reports whether this call won.
// Calls that lose get the phase they found (or phaseOpen with ok false if
// the record was reused, or is being ended by another call right now: they
// wait for that call's local part).
func (r Reservation) begin() (phase uint64, won bool) {
	for {
		st := r.rec.state.Load()
		if st>>phaseBits != r.gen {
			return 0, false // ended long ago: the record was reused
		}
		switch st & (1<<phaseBits - 1) {
		case phaseOpen:
			if r.rec.state.CompareAndSwap(st, r.gen<<phaseBits|phaseEnding) {
				return phaseEnding, true
			}
		case phaseEnding:
			runtime.Gosched() // another Settle or Cancel is doing its local part
		default:
			return phasePending, false
		}
	}
}

// Settle ends the reservation with what the call actually cost. Below the
// reservation, each rule gets the difference back: into the lease it came
// from (no round trip), or with a Release of the reservation's own lease.
// Above it, the excess is taken from tokens this process holds if it can,
// and charged to the rule's key as debt (a Charge) for the rest: the key
// goes below empty, at most its MaxDebt, and its refill repays the debt
// before it admits anything new; what the cap does not allow is forgiven.
// The InFlight slot comes back.
//
// Settle returns an error matching ErrExpired if the reservation's lease
// had ended (as KeepAlive would have said): it names the unused tokens that
// stayed charged, and the excess is charged all the same.
//
// Settle waits for the cluster's answer when one is needed, at most until
// ctx ends; the requests go on in the background meanwhile (for up to a
// minute), and a later Settle of the same reservation waits for them again
// and returns their outcome. A second Settle, or a Settle after Cancel,
// does nothing and charges nothing.
func (r Reservation) Settle(ctx context.Context, actual Cost) error {
	if r.rec == nil {
		return ErrNoReservation
	}
	if err := checkCost(actual); err != nil {
		return err
	}
	phase, won := r.begin()
	if !won {
		if phase == phasePending {
			if job := r.rec.job.Load(); job != nil && job.gen == r.gen {
				return job.wait(ctx)
			}
		}
		return nil
	}
	r.rec.b.c.stats.add(statSettled, 1)
	job, expired := r.rec.b.settle(r.rec, r.gen, actual, false)
	if job != nil {
		if err := job.wait(ctx); err != nil {
			return errors.Join(expired, err)
		}
	}
	return expired
}

// Cancel ends the reservation with nothing charged: the call was not sent.
// Every rule gets its tokens back and the InFlight slot comes back; Cancel
// does not wait for the cluster (a Release of the reservation's own lease,
// if it has one, goes in the background). If the reservation's lease had
// ended, its tokens stay charged and Cancel returns an error matching
// ErrExpired, as Settle does. A Cancel after Settle or Cancel does nothing.
func (r Reservation) Cancel() error {
	if r.rec == nil {
		return ErrNoReservation
	}
	if _, won := r.begin(); won {
		r.rec.b.c.stats.add(statCanceled, 1)
		_, expired := r.rec.b.settle(r.rec, r.gen, Cost{}, true)
		return expired
	}
	return nil
}

// KeepAlive tells the Budget the call is still running (a long stream), so
// that its leases are kept for another TTL ([WithReservationTTL]) from now:
// its InFlight slot stays held and its unused tokens refundable. It makes
// no round trip: the Budget renews the leases in the background (an Extend
// per lease, never more often than the leases' life requires). It returns
// ErrExpired if the reservation's lease has ended already, and nil once
// the reservation has ended.
func (r Reservation) KeepAlive(ctx context.Context) error {
	if r.rec == nil {
		return ErrNoReservation
	}
	// Hold the record as a Settle would (ending), so that it cannot be
	// ended and reused while its takes are read; then open it again.
	if _, won := r.begin(); !won {
		return nil
	}
	rec := r.rec
	defer rec.state.Store(r.gen<<phaseBits | phaseOpen)
	b := rec.b
	until := b.c.now() + int64(b.c.cfg.reservationTTL)
	maxInt64(&rec.keepUntil, until)
	for i := range rec.takes {
		if t := &rec.takes[i]; t.pool {
			for _, p := range t.parts[:t.np] {
				if g := p.ls.group; g != nil {
					maxInt64(&g.keepUntil, until)
				}
			}
		}
	}
	if rec.leaseGone() {
		return ErrExpired
	}
	return ctx.Err()
}

// wait waits for the job's outcome, or ctx.
func (job *settleJob) wait(ctx context.Context) error {
	select {
	case <-job.done:
		return job.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// maxInt64 raises v to x if x is larger.
func maxInt64(v *atomic.Int64, x int64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}
