package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fullBackoff is about how long a Limiter waits before asking a full
// cluster (transport.ErrFull) again, where an outage's backoff is at most
// maxBackoff: room comes back as keys idle out and sessions expire, in
// seconds to minutes, so asking every second would only load the leader,
// while a key waits at most this long once there is room.
const fullBackoff = 5 * time.Second

// refusalBackoffMax is about how long a key the cluster refused waits
// before asking again, when an operator can lift the refusal (retryable):
// a role granted, a certificate rotated, a limit set for a node that
// refuses clients' inline limits (deploying the app before its limits is
// common). Long, as refusals are not outages and are not lifted by
// waiting: a misconfigured fleet of 1000 processes with 10 keys each
// costs the leader under 700 refusals a second (jittered over its second
// half, 15–30 s); short enough that an operator's fix takes effect within
// half a minute, without restarting the app.
const refusalBackoffMax = 30 * time.Second

// refusalBackoff returns how long to wait before asking again about a key
// the cluster refused.
func refusalBackoff() time.Duration {
	return refusalBackoffMax/2 + rand.N(refusalBackoffMax/2+1)
}

// retryable reports whether a rejection of a key (rejected) is one an
// operator can lift without a new build of the app: the key names no
// limit (transport.ErrNoLimit: none set yet, on a node that refuses
// clients' inline limits), or this client's certificate may not make the
// request (ErrPermissionDenied, ErrUnauthenticated: a role granted, a
// certificate rotated; neither needs the app restarted). An invalid
// request (transport.ErrInvalid: a key too long, a count above the burst,
// an inline limit the cluster refuses) is the app's own input, and is
// refused again however often it is asked.
func retryable(err error) bool {
	return !errors.Is(err, transport.ErrInvalid) && (errors.Is(err, transport.ErrNoLimit) ||
		errors.Is(err, transport.ErrPermissionDenied) || errors.Is(err, transport.ErrUnauthenticated))
}

// refusalRetry returns when a key the cluster rejected with err at recv
// may be asked again: after a refusal backoff if an operator can lift the
// refusal, else never.
func refusalRetry(recv int64, err error) int64 {
	if !retryable(err) {
		return never
	}
	return recv + int64(refusalBackoff())
}

// failureBackoff is how long to wait after the failures-th failed exchange
// in a row, the last failing with err: fullBackoff, jittered over its
// second half, after a full cluster's refusal; else jitter.
func failureBackoff(failures int, err error) time.Duration {
	if errors.Is(err, transport.ErrFull) {
		return fullBackoff/2 + rand.N(fullBackoff/2+1)
	}
	return jitter(failures)
}

// unavailableLocked returns ErrUnavailable for a caller that gave up on
// err (its context's) while the cluster was unreachable, saying the last
// failed exchange's error. It matches that error only if it is a full
// cluster's (transport.ErrFull), which the caller can act on, and then
// reads as one (fullError); an attempt's own timeout or unknown outcome is
// not the caller's, who must not read its own context as having timed out.
func (l *Limiter) unavailableLocked(err error) error {
	switch last := l.mu.failErr; {
	case errors.Is(last, transport.ErrFull):
		return &fullError{subject: fmt.Sprintf("key %q", l.key), full: last, cause: err}
	case last != nil:
		return fmt.Errorf("%w (key %q): %w; last answer: %v", ErrUnavailable, l.key, err, last)
	}
	return fmt.Errorf("%w (key %q): %w", ErrUnavailable, l.key, err)
}

// fullOnly returns err if it is a full cluster's refusal
// (transport.ErrFull), else nil.
func fullOnly(err error) error {
	if errors.Is(err, transport.ErrFull) {
		return err
	}
	return nil
}

// A fullError is ErrUnavailable when the cluster's last answer was that it
// is full (transport.ErrFull): a request the failure policy did not admit,
// or a caller that gave up waiting for room. Its text leads with that
// answer, which names the cap, its flag and what to do, where
// ErrUnavailable's ("cluster unreachable") sent its reader looking for a
// network fault. It matches ErrUnavailable still, as documented since the
// caps came: a full cluster is one that cannot decide for this key or
// client, which is what the failure policy is for, and a caller checking
// ErrUnavailable must go on seeing it.
type fullError struct {
	subject string // what was refused (`key "k"`); "" where the wrapper names it
	full    error  // the cluster's answer, a *transport.FullError
	cause   error  // what ended the wait (the caller's context); nil: none
}

func (e *fullError) Error() string {
	msg := e.full.Error()
	if e.subject != "" {
		msg = e.subject + ": " + msg
	}
	if e.cause != nil {
		msg += "; gave up waiting for room: " + e.cause.Error()
	}
	return "leasehold: " + msg
}

func (e *fullError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUnavailable, e.full}
	}
	return []error{ErrUnavailable, e.full, e.cause}
}

// kick starts a background refresh unless one is running or a recent
// failure or denial says to wait. It is called from the fast path once a
// refresh trigger fires.
func (l *Limiter) kick(now int64) {
	if l.refreshing.Load() || now < l.notBefore.Load() {
		return
	}
	l.start()
}

// start starts a refresh unless one is running. A Budget's rule asks its
// Budget, which refreshes the rules that are due together.
func (l *Limiter) start() {
	if l.owner != nil {
		l.owner.startRefresh()
		return
	}
	if l.refreshing.Load() || !l.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !l.c.spawn(l.refresh) {
		l.refreshing.Store(false)
	}
}

// refresh asks the cluster for a lease sized from demand, installs it, and
// repeats while callers are blocked and the cluster cannot be reached. It
// runs on a goroutine the Client owns (see start); when it ends it wakes
// every blocked caller.
func (l *Limiter) refresh() {
	l.mu.Lock()
	defer func() {
		l.refreshing.Store(false)
		l.notifyLocked()
		l.mu.Unlock()
	}()
	for {
		if l.mu.closed || l.mu.err != nil && !l.mu.reasking {
			return
		}
		now := l.c.now()
		if l.chooseLocked(now) && !l.mu.unreachable && !l.mu.reasking {
			// No lease is worth it: held leases are spent to their end,
			// then each request is decided centrally. (While the cluster
			// is unreachable a central Limiter goes on: its refresh is the
			// background probe that lets Allow follow the failure policy
			// at once rather than wait on a round trip; what it gets is a
			// lease of this client's demand, spent as any other.)
			return
		}
		count, want, due := l.planLocked(now)
		var p pacing
		var strandedID uint64
		var stranded int64
		if l.pacedLocked() {
			count, want, p, due = l.planPacedLocked(now)
			if due && !p.live {
				strandedID, stranded = l.strandedLocked(now)
			}
		}
		if !due && l.mu.reasking {
			// A claimed re-ask of a refused key always asks: a lease
			// still holding enough made nothing due, and an ask that
			// sent nothing stayed claimed, the key refused for good.
			count, want, due = 1, 1, true
		}
		if !due {
			l.publishLocked(now)
			return
		}
		l.mu.direct = 0 // a central grant nobody took is stale by now
		l.mu.Unlock()
		if stranded > 0 {
			// Before the Acquire, so that it finds the buckets free.
			l.giveBack(strandedID, stranded)
		}

		ctx, cancel := context.WithTimeout(l.c.base, l.c.cfg.requestTimeout)
		resp, at, err := l.c.acquire(ctx, l.key, l.item, count, want, l.ttl, p)
		cancel()
		recv := l.c.now()

		// Closed meanwhile (checked under l.mu, which shutdown holds): the
		// lease was never installed, so shutdown did not see it; give it
		// back here. Close waits for this goroutine.
		l.mu.Lock()
		if l.mu.closed {
			if err == nil && resp.GetAllowed() && resp.GetLeaseId() != 0 {
				l.mu.Unlock()
				l.giveBack(resp.GetLeaseId(), resp.GetItems()[0].GetGranted())
				l.mu.Lock()
			}
			return
		}
		reasked := l.mu.reasking
		l.mu.reasking = false
		if dead := l.outcomeLocked(resp, at, recv, count, err); dead != nil {
			// It expired on the way here (a very slow reply, or a pause):
			// every token is unused.
			l.mu.Unlock()
			l.giveBack(dead.id, dead.kill())
			l.mu.Lock()
		}
		if reasked && l.mu.err != nil {
			return // still refused, or no answer: asked again after the backoff
		}
		if !l.mu.unreachable || len(l.mu.needs) == 0 {
			return
		}
		// Callers are blocked and the cluster cannot be reached: let them
		// see it (their policy may admit them), back off and try again.
		l.notifyLocked()
		backoff := failureBackoff(l.mu.failures, l.mu.failErr)
		l.mu.Unlock()
		err = l.c.eps.sleep(l.c.base, backoff)
		l.mu.Lock()
		if err != nil {
			return
		}
	}
}

// giveBack releases a lease nobody will spend from, best effort.
func (l *Limiter) giveBack(id uint64, unused int64) {
	ctx, cancel := context.WithTimeout(l.c.base, l.c.cfg.requestTimeout)
	defer cancel()
	if err := l.c.release(ctx, id, unused); err != nil {
		l.c.log.Warn("leasehold: could not give back an unused lease; its tokens return when it expires",
			"key", l.key, "lease", id, "err", err)
	}
}

// outcomeLocked records the outcome of an Acquire of count tokens sent at
// at and answered at recv (sendTimes): a lease to
// install, a central grant to hand out, a denial, a rejection or a failure
// to reach the cluster. It returns a lease that was already dead on
// arrival, for the caller to release.
func (l *Limiter) outcomeLocked(resp *pb.AcquireResponse, at sendTimes, recv, count int64, err error) (dead *lease) {
	sent, since := at.first, at.since
	switch {
	case err == nil:
		l.acceptedLocked()
		lo, hi := stampedWithin(resp, since, recv, l.c.cfg.drift)
		l.answeredWithinLocked(at.last, recv, lo, hi)
		l.lesseesLocked(resp)
		if !resp.GetAllowed() {
			l.deniedLocked(count, sent, recv, resp.GetRetryAfterNs())
			return nil
		}
		granted := resp.GetItems()[0].GetGranted()
		ttl := time.Duration(resp.GetTtlNs())
		if resp.GetPieces() > 0 && resp.GetPieceNs() > 0 && resp.GetLeaseId() != 0 && ttl > 0 {
			return l.piecesLocked(resp, sent, since, recv)
		}
		if pace := resp.GetRetryAfterNs(); pace > 0 {
			// A lease short of its want on a contended key: the cluster
			// says when this client's next share will be there. Until
			// then, what the lease does not cover is refused like a
			// denial, and no refresh starts.
			l.paceUntilLocked(max(sent+pace, recv))
		} else {
			l.setDeniedLocked(denial{})
		}
		if ttl <= 0 || resp.GetLeaseId() == 0 {
			// A central decision: the key grants no leases (a strict
			// bucket whose burst cannot cover a lease). Hand the grant to
			// the blocked callers, and decide centrally from now on.
			if !l.mu.noLease {
				l.mu.central, l.mu.noLease = true, true
				l.c.log.Info("leasehold: key grants no leases; deciding each request centrally", "key", l.key)
			}
			var need int64
			for _, n := range l.mu.needs {
				need += n
			}
			l.mu.direct = min(granted, need)
			l.mu.directUntil = recv + max(int64(time.Millisecond), int64(l.mu.rtt))
			return nil
		}
		ls := newLease(resp.GetLeaseId(), granted, sent, sent+validity(ttl, l.c.cfg.drift), l.c.stripes)
		if ls.deadline <= recv {
			return ls
		}
		l.mu.life = ls.deadline - sent
		i, _ := slices.BinarySearchFunc(l.mu.leases, ls.deadline, func(a *lease, d int64) int {
			return cmpInt(a.deadline, d)
		})
		l.mu.leases = slices.Insert(l.mu.leases, i, ls)
		l.publishLocked(recv)
	case rejected(err):
		l.rejectLocked(err, refusalRetry(recv, err))
	case l.mu.err != nil:
		// Asking again about a refused key (askAgainLocked), the cluster
		// did not answer: the refusal stands, and the failure policy does
		// not decide, until an answer lifts it.
	default:
		l.mu.failures++
		l.mu.failErr = err
		l.notBefore.Store(recv + int64(failureBackoff(l.mu.failures, err)))
		if !l.mu.unreachable {
			l.mu.unreachable = true
			what := "cannot reach the cluster"
			if errors.Is(err, transport.ErrFull) {
				what = "the cluster is full and refuses this key or client"
			}
			l.c.log.Warn("leasehold: "+what+"; spending held leases, then following the failure policy",
				"key", l.key, "policy", l.policy, "err", err)
		}
	}
	return nil
}

// deniedLocked records a denial of count tokens by an Acquire sent at sent
// and answered at recv, with the cluster's retry-after r (ns; −1: never):
// requests of count or more are refused until sent + r. The cluster decided
// after sent, so the key has the tokens no earlier than that: counting from
// the send, the SDK does not refuse past the moment the limit has room again
// (counting from the reply did, by up to the round trip). A denial whose
// retry-after ended before its answer came (a saturated key: a token's
// refill is shorter than the round trip) is remembered for r from the
// reply instead: the key was short a moment ago and its other clients take
// each token as it comes, so asking again at once would cost a round trip
// per refused call (see DESIGN.md).
func (l *Limiter) deniedLocked(count, sent, recv, r int64) {
	until := int64(never)
	if r >= 0 {
		until = sent + max(r, 1)
		if until <= recv {
			until = recv + max(r, 1)
		}
	}
	l.refuseUntilLocked(count, until)
}

// lesseesLocked records the key's lessees and stock from an answer, if it
// says.
func (l *Limiter) lesseesLocked(resp *pb.AcquireResponse) {
	if n := resp.GetLessees(); n > 0 {
		l.mu.lessees = n
	}
	if items := resp.GetItems(); len(items) == 1 {
		l.mu.stock = items[0].GetRemaining()
		l.stock.Store(l.mu.stock)
	}
}

// answeredLocked records that the cluster answered at recv an attempt sent
// at last (sendTimes.last): it is reachable, and the round trip took
// recv − last.
func (l *Limiter) answeredLocked(last, recv int64) { l.answeredWithinLocked(last, recv, last, recv) }

// answeredWithinLocked is answeredLocked for an answer stamped, on our
// clock, within [lo, hi] of the round trip (stampedWithin).
func (l *Limiter) answeredWithinLocked(last, recv, lo, hi int64) {
	l.recoverLocked()
	l.mu.rtt = ewma(l.mu.rtt, float64(recv-last), 0.25)
	if g := l.mu.pieceNs; g > 0 {
		// For pacedLocked: each sample at most two buckets, so that the
		// seconds an answer takes across an election do not keep a
		// window's Limiter off pieces for a dozen leases after it.
		l.mu.pieceBlur = ewma(l.mu.pieceBlur, min(float64(hi-lo), 2*float64(g)), 0.25)
	}
}

// recoverLocked records that the cluster answered.
func (l *Limiter) recoverLocked() {
	if l.mu.unreachable {
		l.c.log.Info("leasehold: cluster reachable again", "key", l.key)
	}
	l.mu.unreachable = false
	l.mu.failures = 0
	l.mu.failErr = nil
	l.fallbackEndedLocked(l.c.now())
	l.notBefore.Store(0)
}
