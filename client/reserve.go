package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/limiter"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// ErrDenied: TryReserve did not admit the reservation: a rule had no room
// for it, or the provider asked to wait (Block). The error is a *RuleError
// saying which rule refused and when the reservation could fit.
var ErrDenied = errors.New("leasehold: denied")

// A RuleError is a reservation a Budget's rule would not admit: the rule,
// its key, when it could, and why (Err: ErrDenied, ErrExceedsLimit,
// ErrWouldExceedDeadline or ErrUnavailable, matched with errors.Is).
type RuleError struct {
	// Counts is the refusing rule's dimension; 0 when the whole Budget is
	// blocked ([Budget.Block]).
	Counts Dimension
	// Key is the refusing rule's key (the Budget's scope when blocked).
	Key string
	// RetryAfter is how long from the refusal until the reservation could
	// fit, as far as this process knows: a lower bound, since others may
	// take the room first. Negative: never (ErrExceedsLimit); 0: not known
	// (ErrUnavailable, or an InFlight slot: one comes back whenever a call
	// ends somewhere). After a grant answered too late to spend, the
	// backoff to wait before asking again.
	RetryAfter time.Duration
	// Err is why. A Reserve that waited for an InFlight slot until its ctx
	// ended matches ErrDenied and ctx's error.
	Err error
}

func (e *RuleError) Error() string {
	what := fmt.Sprintf("rule %v (%q)", e.Counts, e.Key)
	if e.Counts == 0 {
		what = fmt.Sprintf("budget %q blocked", e.Key)
	}
	switch {
	case e.RetryAfter < 0:
		return fmt.Sprintf("%v: %s", e.Err, what)
	case e.RetryAfter > 0:
		return fmt.Sprintf("%v: %s; fits in %v at the earliest", e.Err, what, e.RetryAfter)
	}
	return fmt.Sprintf("%v: %s", e.Err, what)
}

func (e *RuleError) Unwrap() error { return e.Err }

// Reserve takes cost from every rule of the Budget, all or none, waiting
// until it fits or ctx ends, and returns the Reservation to Settle or
// Cancel once the call is done (or was not sent).
//
// While this process holds enough tokens on valid leases of every rule and
// the Budget has no InFlight rule, Reserve takes them with no network call,
// no lock and no allocation; otherwise it asks the cluster: a refresh of the
// rules that ran short (one Acquire for all of them), or one Acquire for the
// rules decided centrally and the InFlight slot, which becomes the
// reservation's own lease (a central grant if a rule's key grants no
// leases; the slot is then taken first, in an Acquire of its own, and
// given back if the other rules refuse). A grant answered too late to
// spend is refused, counted in Stats.Denied.LateAnswer, and asked again
// after a backoff.
//
// Like golang.org/x/time/rate's WaitN, Reserve returns at once an error
// matching ErrWouldExceedDeadline if the cluster's wait (a token rule's
// retry-after, or a Block) ends after ctx's deadline, and one matching
// ErrExceedsLimit if a rule can never admit cost (more than its burst); both
// are *RuleError naming the rule. An InFlight slot has no such wait (one
// comes back whenever a call ends somewhere): Reserve waits for one until
// ctx ends, asking again after a backoff or as soon as one of this
// process's slots comes back. It returns the *transport.InvalidError if
// the rules are invalid, the cluster's rejection of a rule's key (matching
// transport.ErrPermissionDenied, say), whatever the failure policy, until
// the key is asked again and accepted (every 15–30 s for a refusal an
// operator can lift; an invalid request never), ErrClosed after Close, and, while the cluster is
// unreachable and no lease covers cost, what the rules' failure policies
// decide (FailClosed waits for the cluster until ctx ends). With ctx
// already ended it returns ctx's error and takes nothing, as x/time/rate's
// WaitN does, warm leases or not.
//
// Whenever ctx ends before Reserve decides, the error matches ctx's error;
// it matches ErrUnavailable as well if the last exchange with the cluster
// of a rule it waited for failed (no answer within the request timeout, or
// the cluster refused the rule's key or the Client as full: then it begins
// with and matches the *transport.FullError, as a Limiter's Wait does), and
// not if the cluster was merely slower than ctx: one that has not answered
// yet has not failed. What the cluster grants a Reserve that left
// (an InFlight slot, tokens on a lease) is given back when the answer
// comes.
//
// Reservations do not queue: unlike x/time/rate's ReserveN, a large cost
// waits until a rule holds all of it, while smaller ones, in other
// processes, may keep taking what refills. Give large calls a Budget of
// their own, or a deadline after which to wait the RuleError's RetryAfter.
func (b *Budget) Reserve(ctx context.Context, cost Cost) (Reservation, error) {
	if err := ctx.Err(); err != nil {
		return b.counted(Reservation{}, err)
	}
	if r, ok := b.reserveLocal(cost); ok {
		b.c.stats.add(statReserved, 1)
		return r, nil
	}
	return b.counted(b.reserve(ctx, cost, true))
}

// TryReserve is Reserve without the wait for tokens: it takes cost from
// every rule at once, or returns a *RuleError matching ErrDenied that says
// which rule refused and how long until the cost could fit. It does make a
// round trip when no lease held covers cost: like Limiter.Allow it asks
// the cluster then (at most about the request timeout)
// and refuses only on the cluster's word, a grant answered too late to
// spend (RetryAfter the backoff before asking again) or a failure policy,
// never for want of a lease. While a rule's last exchange with the cluster
// failed, its failure policy decides at once, and the cluster is asked
// again in the background once the backoff has passed.
func (b *Budget) TryReserve(cost Cost) (Reservation, error) {
	if r, ok := b.reserveLocal(cost); ok {
		b.c.stats.add(statReserved, 1)
		return r, nil
	}
	ctx, cancel := context.WithTimeout(b.c.base, 2*b.c.cfg.requestTimeout)
	defer cancel()
	return b.counted(b.reserve(ctx, cost, false))
}

// reserveLocal is the fast path: every rule pays from the lease its
// Limiter spends from first, all or none. No lock, no allocation.
func (b *Budget) reserveLocal(cost Cost) (Reservation, bool) {
	if b.slot >= 0 || b.err != nil || cost.Requests < 0 || cost.InputTokens < 0 || cost.OutputTokens < 0 {
		return Reservation{}, false
	}
	now := b.c.now()
	if now < b.blocked.Load() {
		return Reservation{}, false
	}
	rec, gen := b.get()
	for i := range b.rules {
		r := &b.rules[i]
		n := amount(r.Counts, r.Price, cost)
		if n == 0 {
			continue
		}
		ls := r.lim.head.Load()
		if ls == nil || now >= ls.deadline {
			rec.undo(i)
			return Reservation{}, false
		}
		s, salt := ls.pick()
		took := false
		for t := s.tokens.Load(); t >= n; t = s.tokens.Load() {
			if s.tokens.CompareAndSwap(t, t-n) {
				took = true
				if t-n < s.low.Load() || now >= ls.refreshAt.Load() {
					r.lim.kick(now)
				}
				break
			}
			ls.collided(salt)
		}
		if !took {
			rec.undo(i)
			return Reservation{}, false
		}
		s.open.Add(1)
		t := &rec.takes[i]
		t.parts[0], t.np, t.pool = part{s: s, ls: ls, n: n}, 1, true
	}
	rec.keepUntil.Store(now + int64(b.c.cfg.reservationTTL))
	return Reservation{rec: rec, gen: gen}, true
}

// undo gives back what rec took from rules before upto (all of them: len
// of takes), and puts rec back in the pool unused.
func (rec *reservation) undo(upto int) {
	for i := range rec.takes[:min(upto, len(rec.takes))] {
		t := &rec.takes[i]
		if i == rec.b.brokenUndo-1 {
			*t = take{} // the known-bad variant: this rule's tokens are not put back
			continue
		}
		t.refund(t.total())
		t.end()
		*t = take{}
	}
	if g := rec.group; g != nil {
		rec.group = nil
		if g.end() {
			g.giveBack(g.killPieces())
		}
	}
	if rec.fallbackSlot {
		rec.fallbackSlot = false
		rec.b.mu.Lock()
		rec.b.mu.fallbackSlots--
		rec.b.mu.Unlock()
	}
	rec.b.records.Put(rec)
}

// How a rule pays for a reservation on the slow path.
type source int8

const (
	srcNone     source = iota
	srcPool            // from one of its Limiter's leases
	srcOwn             // in the reservation's own Acquire
	srcShort           // its leases fall short: wait for a refresh
	srcDenied          // the cluster said no, for a while
	srcPolicy          // the cluster is unreachable: the failure policy decides
	srcBlocked         // the Budget is blocked (Block)
	srcUrgent          // short, and paced past the caller's deadline: a refresh despite the pace
	srcSlotWait        // the InFlight slot was refused lately: ask again after a backoff
)

// before reports whether ctx ends within d from now.
func before(ctx context.Context, d int64) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < time.Duration(d)
}

// reserve is the slow path of Reserve (wait) and TryReserve (no wait).
func (b *Budget) reserve(ctx context.Context, cost Cost, wait bool) (Reservation, error) {
	b.askRefused(b.c.now())
	if err := b.usable(); err != nil {
		return Reservation{}, err
	}
	if err := checkCost(cost); err != nil {
		return Reservation{}, err
	}
	amounts := b.amounts(cost)
	for i := range b.rules {
		if r := &b.rules[i]; amounts[i] > r.most {
			return Reservation{}, &RuleError{Counts: r.Counts, Key: r.key, RetryAfter: -1,
				Err: fmt.Errorf("%w: %d of at most %d", ErrExceedsLimit, amounts[i], r.most)}
		}
	}
	for round := 0; ; round++ {
		if err := b.usable(); err != nil {
			return Reservation{}, err
		}
		now := b.c.now()
		b.touch(now)
		if until := b.blocked.Load(); now < until {
			if err := b.refuse(ctx, -1, now, until, wait); err != nil {
				return Reservation{}, err
			}
			continue
		}
		rec, gen := b.get()
		probing := b.probing()
		var src [transport.MaxItems]source
		var until [transport.MaxItems]int64 // srcDenied: until when
		for i := range b.rules {
			if amounts[i] == 0 {
				continue
			}
			if i == b.slot {
				src[i], until[i] = b.slotSource(now, wait, probing)
				continue
			}
			r := &b.rules[i]
			l := r.lim
			n := amounts[i]
			l.mu.Lock()
			if err := l.unusableLocked(); err != nil {
				l.mu.Unlock()
				rec.undo(len(rec.takes))
				return Reservation{}, err
			}
			if l.takeLeasesLocked(&rec.takes[i], n, now) {
				src[i] = srcPool
			} else if d := l.mu.denied; n >= d.count && now < d.until && !(d.pace && wait && before(ctx, d.until-now)) {
				src[i], until[i] = srcDenied, d.until
				l.mu.used += n
			} else if l.mu.unreachable && (!wait || now < l.notBefore.Load() || probing) {
				// While another reservation asks (probing), its answer
				// is awaited, not doubled.
				src[i] = srcPolicy
			} else if l.mu.unreachable && b.slot >= 0 {
				// Asked with the slot, in the reservation's own Acquire
				// (a probe: claimProbe), so that they share the next
				// backoff (failed): a refresh of the token rules never
				// carries the slot, which then drifted to a backoff of
				// its own and was probed apart.
				src[i] = srcOwn
				l.mu.used += n
			} else if l.chooseLocked(now) || !wait && round >= allowRounds-1 {
				// Decided centrally: a rule this process uses too little
				// for a lease to pay, or (TryReserve) leases that the
				// refreshes it waited for did not leave it.
				src[i] = srcOwn
				l.mu.used += n
			} else if n >= d.count && now < d.until {
				// Paced past the caller's deadline: the key may hold
				// what it needs now, so ask despite the pace rather than
				// give up on advice (ErrWouldExceedDeadline); not more
				// often than urgentEvery, until which it is refused.
				if next := l.mu.urgentAt + l.urgentEvery(); now < next {
					src[i], until[i] = srcDenied, min(next, d.until)
					l.mu.used += n
				} else {
					src[i] = srcUrgent
				}
			} else {
				src[i] = srcShort
			}
			l.mu.Unlock()
		}

		// A rule that said no: wait for it, or refuse.
		if i, at := latest(src[:], until[:], srcDenied); i >= 0 {
			rec.undo(len(rec.takes))
			if at == never {
				r := &b.rules[i]
				return Reservation{}, &RuleError{Counts: r.Counts, Key: r.key, RetryAfter: -1,
					Err: fmt.Errorf("%w: the cluster says %d can never be admitted", ErrExceedsLimit, amounts[i])}
			}
			if err := b.refuse(ctx, i, now, at, wait); err != nil {
				return Reservation{}, err
			}
			continue
		}
		// The slot, refused lately: wait to ask again.
		if i, at := latest(src[:], until[:], srcSlotWait); i >= 0 {
			rec.undo(len(rec.takes))
			if err := b.awaitSlot(ctx, now, at, wait); err != nil {
				return Reservation{}, err
			}
			continue
		}
		// Rules whose leases fall short: ask for them together, and wait.
		if slices.Contains(src[:], srcShort) || slices.Contains(src[:], srcUrgent) {
			rec.undo(len(rec.takes))
			if err := b.awaitRefresh(ctx, src[:], amounts[:]); err != nil {
				if !wait {
					return Reservation{}, b.notDecided(src[:], err)
				}
				return Reservation{}, b.leftWaiting(ctx, shortRules(src[:]))
			}
			continue
		}
		if slices.Contains(src[:], srcPolicy) {
			retry, err := b.fallback(ctx, rec, src[:], amounts[:], now, wait)
			if err != nil {
				rec.undo(len(rec.takes))
				return Reservation{}, err
			}
			if retry {
				rec.undo(len(rec.takes))
				continue
			}
		}
		if slices.Contains(src[:], srcOwn) {
			switch r, at, err := b.acquireOwn(ctx, rec, gen, src[:], amounts[:]); {
			case errors.Is(err, errLate):
				rec.undo(len(rec.takes))
				if err := b.late(ctx, r, wait); err != nil {
					return Reservation{}, err
				}
				continue
			case err != nil:
				rec.undo(len(rec.takes))
				if errors.Is(err, errRetry) {
					continue
				}
				return Reservation{}, err
			case r >= 0:
				rec.undo(len(rec.takes))
				if err := b.refuse(ctx, r, now, at, wait); err != nil {
					return Reservation{}, err
				}
				continue
			}
		}
		rec.keepUntil.Store(now + int64(b.c.cfg.reservationTTL))
		return Reservation{rec: rec, gen: gen}, nil
	}
}

// errRetry: the reservation's own Acquire got no answer, or one it cannot
// spend that says how to ask next; decide again.
var errRetry = errors.New("retry")

// late handles a reservation whose grant, on rule i among others, was
// answered too late to spend (acquireOwn): counted in
// Stats.Denied.LateAnswer, it backs off (lateStreak): Reserve sleeps that
// long and decides again; TryReserve refuses with it as RetryAfter, so
// that a caller that waits RetryAfter backs off too (with RetryAfter 0 it
// asked again at once).
func (b *Budget) late(ctx context.Context, i int, wait bool) error {
	b.c.stats.add(statDeniedLate, 1)
	backoff := b.lateStreak.backoff()
	if !wait {
		r := &b.rules[i]
		return &RuleError{Counts: r.Counts, Key: r.key, RetryAfter: backoff,
			Err: fmt.Errorf("%w: the cluster's grant was answered too late to spend", ErrDenied)}
	}
	if err := b.c.eps.sleep(ctx, backoff); err != nil {
		return fmt.Errorf("%w (the cluster's last grant was answered too late to spend)", err)
	}
	return nil
}

// latest returns the rule whose source is want and whose until is latest,
// and that time; -1 if none.
func latest(src []source, until []int64, want source) (int, int64) {
	best, at := -1, int64(0)
	for i := range src {
		if src[i] == want && (best < 0 || until[i] > at) {
			best, at = i, until[i]
		}
	}
	return best, at
}

// usable returns why the Budget was closed (an error matching ErrClosed),
// or why its rules are invalid, or the cluster's rejection of its InFlight
// rule.
func (b *Budget) usable() error {
	if b.err != nil {
		return b.err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.mu.closed:
		return b.mu.closeErr
	case b.mu.slotErr != nil:
		return b.mu.slotErr
	}
	return nil
}

// touch records slow-path activity at now, for idle forgetting.
func (b *Budget) touch(now int64) { maxInt64(&b.active, now) }

// refuse handles a reservation that rule i (-1: a Block) refuses until at:
// TryReserve gets a *RuleError matching ErrDenied; Reserve fails fast with
// one matching ErrWouldExceedDeadline if ctx's deadline comes first, else
// sleeps until then (nil: decide again). A refused InFlight slot is
// awaitSlot's.
func (b *Budget) refuse(ctx context.Context, i int, now, at int64, wait bool) error {
	if i >= 0 && i == b.slot {
		return b.awaitSlot(ctx, now, at, wait)
	}
	e := &RuleError{Key: b.scope, RetryAfter: time.Duration(at - now), Err: ErrDenied}
	if i >= 0 {
		e.Counts, e.Key = b.rules[i].Counts, b.rules[i].key
	}
	if !wait {
		return e
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < e.RetryAfter {
		e.Err = ErrWouldExceedDeadline
		return e
	}
	t := time.NewTimer(e.RetryAfter)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.c.closing:
		return ErrClosed
	}
}

// awaitSlot handles a reservation the InFlight rule refuses: every slot
// was held when this process last asked, and it asks again at at (a
// backoff: slotRecheck), or as soon as one of its own slots comes back.
// That backoff paces this process's Acquires; it is not the cluster's
// word, for a slot comes back whenever a call ends somewhere. So
// TryReserve's *RuleError (matching ErrDenied) says no RetryAfter, and
// Reserve waits for it within ctx rather than fail fast: nil to decide
// again, or once ctx ends a *RuleError matching ErrDenied and ctx's error.
func (b *Budget) awaitSlot(ctx context.Context, now, at int64, wait bool) error {
	r := &b.rules[b.slot]
	if !wait {
		return &RuleError{Counts: r.Counts, Key: r.key, Err: fmt.Errorf("%w: every slot is held", ErrDenied)}
	}
	b.mu.Lock()
	changed := b.mu.changed
	b.mu.Unlock()
	t := time.NewTimer(time.Duration(at - now))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-changed:
		return nil
	case <-ctx.Done():
		return &RuleError{Counts: r.Counts, Key: r.key,
			Err: fmt.Errorf("%w: no slot came back before the caller's ctx ended: %w", ErrDenied, ctx.Err())}
	case <-b.c.closing:
		return ErrClosed
	}
}

// notDecided is TryReserve's answer when the refresh it waited for did not
// come in time: a denial by the first short rule, retry-after unknown.
func (b *Budget) notDecided(src []source, err error) error {
	for i, s := range src {
		if s == srcShort {
			return &RuleError{Counts: b.rules[i].Counts, Key: b.rules[i].key, Err: fmt.Errorf("%w: %w", ErrDenied, err)}
		}
	}
	return err
}

// leftWaiting is the error of a reservation whose ctx ended while it
// waited for the cluster's answer about rules: ctx's error, since an
// answer slower than the caller's deadline is not a failure of the
// cluster; matching ErrUnavailable as well if one of the rules' last
// exchange with the cluster failed (unreachable), and reading as and
// matching the cluster's answer if that was a full cluster's, as a
// Limiter's Wait does (fullError).
func (b *Budget) leftWaiting(ctx context.Context, rules []int) error {
	for _, i := range rules {
		if full := b.fullAnswer(i); full != nil {
			return &fullError{subject: fmt.Sprintf("budget %q", b.scope), full: full, cause: ctx.Err()}
		}
	}
	if b.unreachable(rules) {
		return fmt.Errorf("%w (budget %q): %w", ErrUnavailable, b.scope, ctx.Err())
	}
	return fmt.Errorf("leasehold: budget %q: no answer from the cluster yet: %w", b.scope, ctx.Err())
}

// fullAnswer returns rule i's last failed exchange's error if the cluster
// refused it as full (transport.ErrFull), else nil.
func (b *Budget) fullAnswer(i int) error {
	if l := b.rules[i].lim; l != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return fullOnly(l.mu.failErr)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return fullOnly(b.mu.slotFailErr)
}

// policyRefusal is why a rule's failure policy did not admit a
// reservation: ErrUnavailable, with cause (the caller's context's error)
// if it waited; a fullError if full, the rule's last answer, is a full
// cluster's refusal (fullAnswer).
func policyRefusal(full, cause error) error {
	switch {
	case full != nil:
		return &fullError{full: full, cause: cause}
	case cause != nil:
		return fmt.Errorf("%w: %w", ErrUnavailable, cause)
	}
	return ErrUnavailable
}

// unreachable reports whether the last exchange of one of rules with the
// cluster failed.
func (b *Budget) unreachable(rules []int) bool {
	for _, i := range rules {
		l := b.rules[i].lim
		if l == nil {
			b.mu.Lock()
			u := b.mu.slotUnreachable
			b.mu.Unlock()
			if u {
				return true
			}
			continue
		}
		l.mu.Lock()
		u := l.mu.unreachable
		l.mu.Unlock()
		if u {
			return true
		}
	}
	return false
}

// shortRules returns the rules whose leases fall short (srcShort, srcUrgent).
func shortRules(src []source) []int {
	var rules []int
	for i, s := range src {
		if s == srcShort || s == srcUrgent {
			rules = append(rules, i)
		}
	}
	return rules
}

// awaitRefresh asks for a refresh of the short rules (they need amounts)
// and waits for its outcome, or ctx.
func (b *Budget) awaitRefresh(ctx context.Context, src []source, amounts []int64) error {
	b.mu.Lock()
	ch := b.mu.changed
	b.mu.waiting++
	b.mu.Unlock()
	for i, s := range src {
		if s == srcShort || s == srcUrgent {
			l := b.rules[i].lim
			l.mu.Lock()
			l.mu.needs = append(l.mu.needs, amounts[i])
			if s == srcUrgent {
				l.mu.urgent++
			}
			l.mu.Unlock()
		}
	}
	b.startRefresh()
	err := waitChange(ctx, ch, int64(2*b.c.cfg.requestTimeout))
	for i, s := range src {
		if s == srcShort || s == srcUrgent {
			l := b.rules[i].lim
			l.mu.Lock()
			if j := slices.Index(l.mu.needs, amounts[i]); j >= 0 {
				l.mu.needs = slices.Delete(l.mu.needs, j, j+1)
			}
			if s == srcUrgent {
				l.mu.urgent--
			}
			l.mu.Unlock()
		}
	}
	b.mu.Lock()
	b.mu.waiting--
	b.mu.Unlock()
	return err
}

// takeLeasesLocked takes n tokens from the leases l holds, from as few as
// it can (at most maxParts; the ones that expire first), into t: all of
// them or none.
func (l *Limiter) takeLeasesLocked(t *take, n, now int64) bool {
	if ls := l.head.Load(); ls != nil && ls.usable(now) == 0 {
		l.publishLocked(now)
	}
	if l.heldLocked(now) < n {
		return false
	}
	// One lease that holds n, if there is one; else the first ones.
	order := make([]*lease, 0, len(l.mu.leases))
	for _, ls := range l.mu.leases {
		if ls.usable(now) >= n {
			order = append(order, ls)
			break
		}
	}
	if len(order) == 0 {
		for _, ls := range l.mu.leases {
			if ls.usable(now) > 0 {
				order = append(order, ls)
			}
		}
	}
	got := int64(0)
	t.pool = true
	for _, ls := range order {
		if t.np == maxParts {
			break
		}
		var first *stripe
		k := int64(0)
		for j := range ls.stripes {
			s := &ls.stripes[j]
			if x := s.takeUpTo(n - got - k); x > 0 {
				if first == nil {
					first = s
				}
				k += x
			}
			if got+k == n {
				break
			}
		}
		if k > 0 {
			first.open.Add(1)
			t.add(part{s: first, ls: ls, n: k})
			got += k
		}
		if got == n {
			break
		}
	}
	if got < n {
		t.refund(got)
		t.end()
		*t = take{}
		return false
	}
	l.rebalanceLocked(now)
	l.armLocked(now)
	return true
}

// slotSource decides how the InFlight rule pays at now; probing: another
// reservation asks the cluster (claimProbe).
func (b *Budget) slotSource(now int64, wait, probing bool) (source, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case now < b.mu.slotDenied:
		return srcSlotWait, b.mu.slotDenied
	case b.mu.slotUnreachable && (!wait || now < b.mu.slotNotBefore || probing):
		return srcPolicy, 0
	}
	return srcOwn, 0
}

// A refused InFlight slot (or the last one granted) is remembered for a
// while, since slots come back when calls end somewhere, which the cluster
// cannot foresee: 10ms after the first refusal, doubling with each refusal
// in a row up to 100ms, with full jitter; until one of this process's slots
// comes back. The cap is what another process's waiters wait at most to
// learn of a slot this process freed, whose own waiters learn at once: at
// a second, two processes' shares of a cap of 4 were 17 to 161 in a 20s run
// (DESIGN.md, "slot waits").
const (
	slotRecheck    = 10 * time.Millisecond
	slotRecheckMax = 100 * time.Millisecond
)

// acquireOwn takes the rules decided centrally (srcOwn) and the InFlight
// slot, in one Acquire (acquireRules) unless the slot is among them beside
// a key that grants no leases. The cluster refuses a concurrency key beside
// such a key (a lease of both would have TTL 0, and only a lease holds a
// slot), so the slot is then taken first, alone, as the reservation's own
// lease, and the other rules after it, centrally; if they are refused, the
// caller's undo gives the slot back. Slot first, since a slot can be given
// back and a central grant cannot: a reservation the slot refuses takes
// nothing from the other keys.
func (b *Budget) acquireOwn(ctx context.Context, rec *reservation, gen uint64, src []source, amounts []int64) (int, int64, error) {
	var rules []int
	for i, s := range src {
		if s == srcOwn {
			rules = append(rules, i)
		}
	}
	k := slices.Index(rules, b.slot)
	if k < 0 || len(rules) == 1 {
		return b.acquireRules(ctx, rec, gen, rules, amounts)
	}
	others := slices.Delete(slices.Clone(rules), k, k+1)
	if !b.ownCentral(others) {
		return b.acquireRules(ctx, rec, gen, rules, amounts)
	}
	if i, at, err := b.acquireRules(ctx, rec, gen, rules[k:k+1], amounts); i >= 0 || err != nil {
		return i, at, err
	}
	// The record's keepUntil is its last reservation's, or 0: set it now,
	// so that the keeper renews the slot's lease while the others are
	// decided rather than give it back.
	rec.keepUntil.Store(b.c.now() + int64(b.c.cfg.reservationTTL))
	i, at, err := b.acquireRules(ctx, rec, gen, others, amounts)
	if i < 0 && err == nil && rec.group.gone.Load() {
		// The slot's lease ended meanwhile (a renewal failed): the
		// reservation would hold no slot.
		b.lateStreak.record(true)
		return b.slot, 0, errLate
	}
	return i, at, err
}

// acquireRules takes rules (the reservation's srcOwn rules, or the slot or
// the others of them: acquireOwn) in one Acquire: the reservation's own
// lease, all or nothing, or a central grant if one of the keys grants no
// leases (ownCentral). It returns the refusing rule and until when, or -1
// when granted; errRetry if the cluster did not answer (the rules record
// it, so the next round follows their policy), answered a lease request
// with a central grant, or refused the slot beside a key that grants no
// leases (asked again centrally, the slot apart); errLate, with the first
// of the rules, if the grant was answered too late to spend; and, if ctx
// ends first, ctx's error (askOwn gives back what the answer brings).
// While another reservation of this process probes for rules
// (claimProbe), it asks nothing: for rules whose last exchange failed it
// returns errRetry (their policy decides while the probe's answer is
// awaited), else it returns the slot, refused lately, refusing until the
// probe's answer or a backoff.
//
// Either way the reservation's tokens are spent when the answer arrives,
// and the bound on each key (fsm's Machine.acquire) covers a token only
// if that is at most Λ, the key's MaxLease, after the log time T that
// granted it. A lease's TTL is at most every key's MaxLease and its
// deadline counts from the first send, before T: an answer read after it
// is given back. A central grant asked with a span says its Λ the same way.
func (b *Budget) acquireRules(ctx context.Context, rec *reservation, gen uint64, rules []int, amounts []int64) (int, int64, error) {
	ok, probe, failed := b.claimProbe(rules)
	switch {
	case !ok && failed:
		return -1, 0, errRetry
	case !ok:
		return b.slot, b.c.now() + int64(slotRecheckMax), nil
	}
	q := b.ownAcquire(rules, amounts)
	q.probe = probe
	a, err := b.askOwn(ctx, q)
	if err != nil {
		return -1, 0, err // the answer is dropAnswer's, which ends the probe
	}
	if probe {
		defer b.endProbe()
	}
	return b.takeAnswer(rec, gen, q, a)
}

// ownAcquire is a reservation's own Acquire: its rules, an item for each,
// and the lease TTL (0: central, with span) it asks for.
type ownAcquire struct {
	rules     []int
	items     []*pb.AcquireItem
	ttl, span time.Duration
	probe     bool // it asks after the slot's refusals or rules' failures: claimProbe, probe
}

// ownAcquire returns the reservation's own Acquire of amounts of rules.
func (b *Budget) ownAcquire(rules []int, amounts []int64) ownAcquire {
	q := ownAcquire{rules: rules, items: make([]*pb.AcquireItem, len(rules))}
	for k, i := range rules {
		r := &b.rules[i]
		q.items[k] = &pb.AcquireItem{Key: r.key, Count: amounts[i], Want: amounts[i], Limit: r.item}
	}
	q.ttl = min(b.c.cfg.reservationTTL, transport.MaxLeaseTTL)
	if b.ownCentral(rules) {
		q.ttl, q.span = 0, transport.MaxLeaseTTL
	}
	return q
}

// ownAnswer is how the cluster answered an ownAcquire, and when (recv).
type ownAnswer struct {
	resp *pb.AcquireResponse
	at   sendTimes
	recv int64
	err  error
}

// askOwn sends q on a goroutine the Client owns, bounded by the request
// timeout and not by ctx, and waits for the answer or for ctx. The cluster
// applies an Acquire whether or not its caller still waits, so a caller
// that leaves must not drop the answer: the goroutine takes it on a record
// of its own and undoes that at once, which releases a granted lease whole
// (its InFlight slot and its token rules' estimates come back) and records
// what the answer says of the keys (a denial, a failure) as the caller
// would have. (A central grant's tokens are spent either way.) The caller
// gets ctx's error; see leftWaiting.
func (b *Budget) askOwn(ctx context.Context, q ownAcquire) (ownAnswer, error) {
	answered := make(chan ownAnswer, 1)
	var decided atomic.Bool // the goroutine handed the answer over, or the caller left
	send := func() {
		a := b.sendOwn(q)
		if decided.CompareAndSwap(false, true) {
			answered <- a
			return
		}
		b.dropAnswer(q, a)
	}
	if !b.c.spawn(send) {
		if q.probe {
			b.endProbe()
		}
		return ownAnswer{}, ErrClosed
	}
	select {
	case a := <-answered:
		return a, nil
	case <-ctx.Done():
		if decided.CompareAndSwap(false, true) {
			return ownAnswer{}, b.leftWaiting(ctx, q.rules)
		}
		return <-answered, nil // it came as the caller left
	}
}

// sendOwn sends q, bounded by the request timeout, and returns the answer.
func (b *Budget) sendOwn(q ownAcquire) ownAnswer {
	ctx, cancel := context.WithTimeout(b.c.base, b.c.cfg.requestTimeout)
	defer cancel()
	resp, at, err := b.c.acquireItems(ctx, q.items, q.ttl, q.span)
	return ownAnswer{resp: resp, at: at, recv: b.c.now(), err: err}
}

// dropAnswer takes the answer to q, which no caller waits for, on a record
// of its own and undoes that at once: a granted lease is released whole,
// and what the answer says of the keys is recorded. A probe ends after
// the release: ended before, it woke the reservations waiting for it,
// which asked while the probe's lease still held the slot and tokens.
func (b *Budget) dropAnswer(q ownAcquire, a ownAnswer) {
	rec, gen := b.get()
	b.takeAnswer(rec, gen, q, a)
	rec.undo(len(rec.takes))
	if q.probe {
		b.endProbe()
	}
}

// takeAnswer applies the cluster's answer to a reservation's own Acquire
// to rec (acquireRules says what it returns).
func (b *Budget) takeAnswer(rec *reservation, gen uint64, q ownAcquire, a ownAnswer) (int, int64, error) {
	rules, items, ttl := q.rules, q.items, q.ttl
	resp, at, recv, err := a.resp, a.at, a.recv, a.err
	sent := at.first
	switch {
	case err != nil && ttl > 0 && len(rules) > 1 && slices.Contains(rules, b.slot) && refusedByApply(err):
		// The slot beside a key that grants no leases, which the refusal
		// does not name (nothing was taken): every other rule is taken
		// for one, as when a lease request is answered centrally.
		b.grantNoLeases(slices.DeleteFunc(slices.Clone(rules), func(i int) bool { return i == b.slot }))
		return -1, 0, errRetry
	case err != nil && rejected(err):
		b.rejectedRules(rules, err)
		return -1, 0, fmt.Errorf("leasehold: budget %q: %w", b.scope, err)
	case err != nil:
		b.failed(rules, at, recv, err)
		return -1, 0, errRetry
	}
	b.accepted(rules)
	if !resp.GetAllowed() {
		return b.ownRefused(resp, at, recv, rules, items)
	}
	grants := resp.GetItems()
	b.mu.Lock()
	b.mu.slotUnreachable, b.mu.slotFailures, b.mu.slotFailErr = false, 0, nil
	if k := slices.Index(rules, b.slot); k >= 0 && grants[k].GetRemaining() == 0 {
		// The last slot: the others would be refused, as after a
		// refusal (and the probes go on one at a time).
		b.slotFullLocked(recv)
	} else {
		b.mu.slotDenials = 0
	}
	b.mu.Unlock()
	for k, i := range rules {
		if l := b.rules[i].lim; l != nil {
			l.mu.Lock()
			l.answeredLocked(at.last, recv)
			if n := resp.GetLessees(); n > 0 {
				l.mu.lessees = n
			}
			l.mu.stock = grants[k].GetRemaining()
			l.stock.Store(l.mu.stock)
			l.mu.Unlock()
		}
	}
	id, life := resp.GetLeaseId(), time.Duration(resp.GetTtlNs())
	if id == 0 || life <= 0 {
		// A central grant: the tokens are spent and cannot be refunded.
		switch {
		case ttl > 0 && !slices.Contains(rules, b.slot):
			// Answered to a lease request, nothing says how late it
			// may be spent: ask again centrally, with a span.
			b.grantNoLeases(rules)
			return -1, 0, errRetry
		case ttl == 0 && life > 0 && !b.spanLive(rules[0], resp, at):
			b.lateStreak.record(true)
			return rules[0], 0, errLate
		}
		// Live, or answered with no span (a key that grants no leases
		// has no Λ to answer, nor has a cluster that predates
		// SpanBuckets): spent as it comes.
		b.lateStreak.record(false)
		for k, i := range rules {
			rec.takes[i].add(part{n: grants[k].GetGranted()})
		}
		return -1, 0, nil
	}
	validUntil := sent + validity(life, b.c.cfg.drift)
	g := &leaseGroup{b: b, id: id, exclusive: true, rec: rec, gen: gen, rules: rules, ttl: ttl,
		lead: b.keepLead(rules, validUntil-sent)}
	g.mu.validUntil = validUntil
	deadline := validUntil - g.lead
	for k, i := range rules {
		p := newLease(id, grants[k].GetGranted(), sent, deadline, 1)
		p.group = g
		g.pieces = append(g.pieces, p)
		if i != b.slot {
			// The reservation took every token: the piece holds what it
			// refunds, for the lease's Release.
			p.stripes[0].tokens.Store(0)
			rec.takes[i].add(part{s: &p.stripes[0], ls: p, n: items[k].GetCount()})
		}
	}
	rec.group = g
	if deadline <= recv {
		b.lateStreak.record(true)
		return rules[0], 0, errLate // undo gives it back
	}
	if !b.track(g, deadline) {
		return -1, 0, errRetry // closed; undo gives it back
	}
	b.lateStreak.record(false)
	return -1, 0, nil
}

// refusedByApply reports whether err is the cluster refusing a request as
// invalid when applying it (an *transport.InvalidError naming no field); a
// request a node finds malformed before that names the field at fault.
func refusedByApply(err error) bool {
	var invalid *transport.InvalidError
	return errors.As(err, &invalid) && invalid.Field == ""
}

// ownCentral reports whether a reservation's own Acquire of rules asks for
// a central grant rather than a lease: one of the keys grants no leases
// (grantNoLeases), so the cluster would answer a lease request with a
// central grant anyway, and asked centrally with a span (the longest there
// is, as a Limiter's token bucket asks: Limiter.centralSpanLocked) it
// answers its leasing keys' least MaxLease, how late the grant may be
// spent. Never with the InFlight slot, which only a lease holds (acquireOwn
// asks it apart from such keys).
func (b *Budget) ownCentral(rules []int) bool {
	central := false
	for _, i := range rules {
		l := b.rules[i].lim
		if l == nil {
			return false
		}
		l.mu.Lock()
		central = central || l.mu.noLease
		l.mu.Unlock()
	}
	return central
}

// spanLive reports whether a central grant answered with the span it may
// be spent in may still be spent now, by the rule of token rule i's
// Limiter (Limiter.spanLiveLocked).
func (b *Budget) spanLive(i int, resp *pb.AcquireResponse, at sendTimes) bool {
	l := b.rules[i].lim
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spanLiveLocked(resp, at)
}

// ownRefused records the denial of a reservation's own Acquire and returns
// the rule that refused (the first item the key could not give its count;
// the first item if the answer names none) and until when.
func (b *Budget) ownRefused(resp *pb.AcquireResponse, st sendTimes, recv int64, rules []int, items []*pb.AcquireItem) (int, int64, error) {
	if slices.Contains(rules, b.slot) {
		// A refusal is an answer: the cluster decides the slot again, as
		// after a grant. Left unreachable, a slot probe refused because
		// another process held the only slot left FailOpen admitting every
		// call past the limit, each starting another probe (a review).
		b.mu.Lock()
		b.mu.slotUnreachable, b.mu.slotFailures, b.mu.slotFailErr = false, 0, nil
		b.mu.Unlock()
	}
	sent := st.first
	grants := resp.GetItems()
	short := func(k int) bool { return k >= len(grants) || grants[k].GetRemaining() < items[k].GetCount() }
	anyShort := false
	for k := range rules {
		anyShort = anyShort || short(k)
	}
	r := resp.GetRetryAfterNs()
	refusing, at := -1, int64(0)
	for k, i := range rules {
		refuses := !anyShort || short(k)
		var until int64
		if l := b.rules[i].lim; l != nil {
			// Every key answered, those with room too: none of them is
			// unreachable now (a probe asks for them with the slot).
			l.mu.Lock()
			l.answeredLocked(st.last, recv)
			if refuses {
				l.deniedLocked(items[k].GetCount(), sent, recv, r)
				until = l.mu.denied.until
			}
			l.mu.Unlock()
		} else if refuses {
			// A slot comes back when a call ends somewhere, which the
			// cluster cannot foresee: look again soon, or as soon as one of
			// this process's slots comes back.
			b.mu.Lock()
			until = b.slotFullLocked(recv)
			b.mu.slotDenials++
			b.mu.Unlock()
		}
		if refuses && refusing < 0 {
			refusing, at = i, until
		}
	}
	return refusing, at, nil
}

// slotFullLocked records that every slot was held at recv: no reservation
// of this process asks for one before the returned time (slotRecheck, with
// full jitter, doubling with each refusal in a row), or before one of its
// own slots comes back.
func (b *Budget) slotFullLocked(recv int64) int64 {
	b.mu.slotDenied = recv + 1 + int64(fullJitter(slotRecheck, slotRecheckMax, b.mu.slotDenials))
	return b.mu.slotDenied
}

// claimProbe reports whether a reservation may ask the cluster for rules
// now, and whether it is the probe: after a refusal of the InFlight slot,
// until a slot is granted, and while the last exchange of one of rules
// failed (failed), until the cluster answers, one reservation of this
// process asks at a time and the others wait for its answer (endProbe
// wakes them), so that a process's waiters cost the cluster an Acquire
// per backoff, not one each.
func (b *Budget) claimProbe(rules []int) (ok, probe, failed bool) {
	failed = b.unreachable(rules)
	b.mu.Lock()
	denied := slices.Contains(rules, b.slot) && b.mu.slotDenials > 0
	switch {
	case !denied && !failed:
		b.mu.Unlock()
		return true, false, false
	case b.mu.probing:
		b.mu.Unlock()
		return false, false, failed
	}
	b.mu.probing = true
	b.mu.Unlock()
	// The caller decided to ask before the claim; a probe that ended in
	// between has recorded its failure and the next backoff, which it must
	// wait out rather than ask at once, at the same instant (seen under
	// -race: two Acquires at one instant).
	if failed && b.backingOff(rules, b.c.now()) {
		b.endProbe()
		return false, false, true
	}
	return true, true, failed
}

// backingOff reports whether the last exchange of one of rules failed and
// its backoff has not passed at now.
func (b *Budget) backingOff(rules []int, now int64) bool {
	for _, i := range rules {
		if l := b.rules[i].lim; l != nil {
			l.mu.Lock()
			off := l.mu.unreachable && now < l.notBefore.Load()
			l.mu.Unlock()
			if off {
				return true
			}
			continue
		}
		b.mu.Lock()
		off := b.mu.slotUnreachable && now < b.mu.slotNotBefore
		b.mu.Unlock()
		if off {
			return true
		}
	}
	return false
}

// probing reports whether a probe is out (claimProbe, probe).
func (b *Budget) probing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.probing
}

// endProbe records that the probe's answer has been taken, and wakes the
// callers waiting for it.
func (b *Budget) endProbe() {
	b.mu.Lock()
	b.mu.probing = false
	b.notifyLocked()
	b.mu.Unlock()
}

// slotFailed records that the InFlight rule's Acquire got no answer, or
// was refused by a full cluster, and returns until when it backs off.
func (b *Budget) slotFailed(recv int64, err error) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mu.slotFailures++
	b.mu.slotFailErr = err
	// A full cluster's backoff, as a Limiter's (failureBackoff): the
	// slot's key or this Client may be what the cluster has no room for.
	b.mu.slotNotBefore = recv + int64(failureBackoff(b.mu.slotFailures, err))
	if !b.mu.slotUnreachable {
		b.mu.slotUnreachable = true
		what := "cannot reach the cluster"
		if errors.Is(err, transport.ErrFull) {
			what = "the cluster is full and refuses"
		}
		b.c.log.Warn("leasehold: "+what+" for a budget's in-flight slot; following its failure policy",
			"scope", b.scope, "err", err)
	}
	return b.mu.slotNotBefore
}

// probe asks the cluster in the background for the InFlight slot, and in
// the same Acquire for the token rules left to their policy (srcPolicy)
// whose backoff has passed, at amounts, if the last exchange of the slot
// failed, its backoff has passed and no other probe is out. It is what a
// token rule's background refresh is to its failure policy
// (Limiter.kick): a caller the policy decided at once (TryReserve) does
// not wait for the cluster, yet the cluster is asked again, once per
// backoff, and its answer ends the failures or sets the next backoff, which
// the rules share (Budget.failed). Only a lease holds a slot, and this one
// has no caller: a grant is given back at once (dropAnswer). A rule whose
// key grants no leases cannot share the slot's lease (acquireOwn): it is
// refreshed apart.
func (b *Budget) probe(src []source, amounts []int64, now int64) {
	b.mu.Lock()
	due := b.mu.slotUnreachable && now >= b.mu.slotNotBefore && !b.mu.probing
	b.mu.probing = b.mu.probing || due
	b.mu.Unlock()
	if !due {
		return
	}
	var rules []int
	for i, s := range src {
		switch {
		case i == b.slot:
			rules = append(rules, i)
		case s != srcPolicy:
		case b.ownCentral([]int{i}):
			b.rules[i].lim.kick(now)
		case now >= b.rules[i].lim.notBefore.Load():
			rules = append(rules, i)
		}
	}
	q := b.ownAcquire(rules, amounts)
	q.probe = true
	if !b.c.spawn(func() { b.dropAnswer(q, b.sendOwn(q)) }) {
		b.endProbe()
	}
}

// slotFreed wakes callers waiting for an InFlight slot: one of this
// process's came back.
func (b *Budget) slotFreed() {
	b.mu.Lock()
	b.mu.slotDenied = 0
	b.notifyLocked()
	b.mu.Unlock()
}

// fallback applies the failure policies of the rules the cluster cannot
// decide now (srcPolicy), all or nothing: FailOpen admits, a FallbackShare
// takes from the rule's local share, FailClosed refuses. It returns retry
// true when the caller should decide again (after a wait), or the error to
// return.
func (b *Budget) fallback(ctx context.Context, rec *reservation, src []source, amounts []int64, now int64, wait bool) (retry bool, err error) {
	type saved struct {
		l  *Limiter
		st limiter.BucketState
	}
	var undo []saved
	refusing, retryAt := -1, int64(-1)
	slotTaken := false
	// Whatever the policies decide, the cluster is asked again once the
	// backoff has passed, in the background, as a Limiter's fallback does:
	// else a caller that never waits (TryReserve) would leave every rule
	// to its policy for good.
	defer b.askAgain(src, amounts, now)
	for i, s := range src {
		if s != srcPolicy {
			continue
		}
		r := &b.rules[i]
		if i == b.slot {
			switch p := b.policyOf(r).(type) {
			case FailMode:
				if p == FailOpen {
					continue
				}
			case FallbackShare:
				b.mu.Lock()
				if b.mu.fallbackSlots < max(1, r.Limit.Rate/int64(p.Clients)) {
					b.mu.fallbackSlots++
					slotTaken = true
					b.mu.Unlock()
					continue
				}
				b.mu.Unlock()
			}
			refusing = i
			break
		}
		l := r.lim
		l.mu.Lock()
		if l.mu.fallbackSince < 0 {
			l.mu.fallbackSince = now
			if l.mu.share != nil {
				l.mu.shareState = limiter.BucketState{TAT: now + int64(l.mu.share.Cost(l.mu.share.Burst()))}
			}
		}
		ok := false
		switch p := l.policy.(type) {
		case FailMode:
			ok = p == FailOpen
		case FallbackShare:
			if end := l.mu.fallbackSince + int64(p.For); now < end && l.mu.share != nil {
				undo = append(undo, saved{l, l.mu.shareState})
				d := l.mu.share.Take(&l.mu.shareState, now, amounts[i])
				ok = d.Allowed
				if !ok && d.RetryAfter != limiter.Never && now+int64(d.RetryAfter) < end {
					retryAt = max(retryAt, now+int64(d.RetryAfter))
				}
			}
		}
		l.mu.used += amounts[i]
		l.mu.Unlock()
		if !ok {
			refusing = i
			break
		}
	}
	if refusing < 0 {
		rec.fallbackSlot = slotTaken
		for i, s := range src {
			if s == srcPolicy && i != b.slot {
				rec.takes[i].add(part{n: amounts[i]})
				rec.takes[i].policy = true
			}
		}
		return false, nil
	}
	for _, u := range undo {
		u.l.mu.Lock()
		u.l.mu.shareState = u.st
		u.l.mu.Unlock()
	}
	if slotTaken {
		b.mu.Lock()
		b.mu.fallbackSlots--
		b.mu.Unlock()
	}
	r := &b.rules[refusing]
	if !wait {
		return false, &RuleError{Counts: r.Counts, Key: r.key, Err: fmt.Errorf("%w (%w)", ErrDenied, policyRefusal(b.fullAnswer(refusing), nil))}
	}
	if retryAt >= 0 {
		if err := b.refuse(ctx, refusing, now, retryAt, true); err != nil {
			return false, err
		}
		return true, nil
	}
	// Failing closed: wait for the cluster, asking again after the backoff,
	// or once the probe's answer comes (endProbe), which ends within the
	// request timeout.
	at := now + int64(baseBackoff)
	if l := r.lim; l != nil {
		at = max(at, l.notBefore.Load())
	}
	b.mu.Lock()
	changed := b.mu.changed
	if r.lim == nil {
		at = max(at, b.mu.slotNotBefore)
	}
	if b.mu.probing {
		at = max(at, now+int64(b.c.cfg.requestTimeout))
	}
	b.mu.Unlock()
	t := time.NewTimer(time.Duration(at - now))
	defer t.Stop()
	select {
	case <-t.C:
		return true, nil
	case <-changed:
		return true, nil
	case <-ctx.Done():
		return false, &RuleError{Counts: r.Counts, Key: r.key, Err: policyRefusal(b.fullAnswer(refusing), ctx.Err())}
	case <-b.c.closing:
		return false, ErrClosed
	}
}

// askAgain starts, in the background, an exchange with the cluster for
// the rules left to their failure policy (srcPolicy), once their backoff
// has passed and unless a probe is out, whose answer is awaited: a probe
// of the InFlight slot that asks for the token rules too (probe), else a
// refresh of the token rules (Limiter.kick). One Acquire, not one for the
// slot and one for the rules, each as its backoff ended (14 in 30 s where
// the full cluster's backoff allows 13).
func (b *Budget) askAgain(src []source, amounts []int64, now int64) {
	switch {
	case b.slot >= 0 && src[b.slot] == srcPolicy:
		b.probe(src, amounts, now)
	case b.probing():
	default:
		for i, s := range src {
			if s == srcPolicy {
				b.rules[i].lim.kick(now)
			}
		}
	}
}

// policyOf returns the failure policy of a rule.
func (b *Budget) policyOf(r *budgetRule) FailurePolicy {
	if r.lim != nil {
		return r.lim.policy
	}
	if r.Limit.FailurePolicy != nil {
		return r.Limit.FailurePolicy
	}
	return b.c.cfg.policy
}
