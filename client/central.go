package client

import (
	"context"
	"runtime"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// maxCentralCalls bounds how many waiting requests one central Acquire
// decides.
const maxCentralCalls = 1024

// centralCall is one request of n tokens waiting for a central decision.
// gone is guarded by the Limiter's mu.
type centralCall struct {
	n    int64
	done chan centralAnswer // capacity 1: the sender never blocks
	gone bool               // its caller stopped waiting before it was sent
}

// centralAnswer is what a central request learns from the Acquire that
// carried it.
type centralAnswer int8

const (
	// centralAdmitted: the grant covered the request.
	centralAdmitted centralAnswer = iota + 1
	// centralRefused: the grant ran out before this request (the key had
	// fewer tokens than the requests in that Acquire asked for).
	centralRefused
	// centralDenied: the cluster denied the Acquire (it had fewer tokens
	// than the smallest request); the sender recorded the denial. Allow
	// returns false; Wait decides again from what was recorded.
	centralDenied
	// centralAgain: no grant (a failure to reach the cluster, a
	// rejection, Close). The sender recorded it on the Limiter; the caller
	// decides again from what was recorded.
	centralAgain
	// centralLate: a grant answered after the span it may be spent in
	// (centralSpanLocked: a sliding window's span, a token bucket's
	// MaxLease): not spent. Allow returns false; Wait decides again after
	// a backoff.
	centralLate
)

// obtainCentral asks the cluster for n tokens with no lease. Requests that
// arrive while a central Acquire is in flight wait for the next one, which
// carries them all (count: the smallest of them, want: their sum, ttl 0), so
// one Raft entry decides them together. Each admitted token is still taken
// from the key by a committed entry at its log time, and none is held after
// the answer: the grant is handed to the waiting requests in arrival order,
// each admitted if what is left covers it, the rest refused, as one decision
// per request at that log time would be; what is left after them is not
// used (see DESIGN.md).
func (l *Limiter) obtainCentral(ctx context.Context, n int64, wait bool) error {
	for {
		l.mu.Lock()
		if err := l.unusableLocked(); err != nil {
			l.mu.Unlock()
			return err
		}
		now := l.c.now()
		if d := l.mu.denied; n >= d.count && now < d.until {
			l.mu.Unlock()
			if err := l.deny(ctx, n, now, d.until, wait); err != nil {
				return err
			}
			continue
		}
		// While the cluster is believed unreachable, Allow follows the
		// failure policy at once (a refresh probes in the background,
		// after the backoff); Wait asks again once the backoff has passed.
		if l.mu.unreachable && (!wait || now < l.notBefore.Load()) {
			if done, err := l.fallback(ctx, n, now, wait); done {
				return err
			}
			continue
		}
		call := &centralCall{n: n, done: make(chan centralAnswer, 1)}
		l.mu.calls = append(l.mu.calls, call)
		start := !l.mu.sending
		l.mu.sending = true
		changed := l.mu.changed
		l.mu.Unlock()
		if start && !l.c.spawn(l.sendCentral) {
			// The Client is closing: wake the requests queued meanwhile
			// too; they find the Limiter closed.
			l.mu.Lock()
			l.mu.sending = false
			answerAll(l.mu.calls, centralAgain)
			l.mu.calls = nil
			l.mu.Unlock()
			return ErrClosed
		}

		answer, err := l.awaitCentral(ctx, call, changed)
		switch {
		case err != nil:
			if !wait && ctx.Err() != nil {
				return errUnreachable // no outcome in time
			}
			if ctx.Err() != nil {
				// Failing closed, a Wait that ran out of time while the
				// cluster was unreachable says so, as on the lease path.
				l.mu.Lock()
				if l.mu.unreachable {
					err = l.unavailableLocked(err)
				}
				l.mu.Unlock()
			}
			return err
		case answer == centralAdmitted:
			l.c.stats.add(statCentral, uint64(n))
			l.c.trace.admit(l.key, n, 0, AdmitCentral) // on the caller's goroutine, as Trace promises
			return nil
		case (answer == centralRefused || answer == centralDenied) && !wait:
			return errDenied
		case answer == centralLate && !wait:
			return errLate
		case answer == centralLate:
			// Waiting: counted as Allow counts it, and asked again only
			// after a backoff. Each late grant took tokens from the key
			// and gave none; on a key whose MaxLease is shorter than
			// the answers take, every grant is late, and asking again at
			// once spent the key's tokens as fast as the cluster could
			// answer.
			l.c.stats.add(statDeniedLate, 1)
			if err := l.c.eps.sleep(ctx, l.lateStreak.backoff()); err != nil {
				return err
			}
			continue
		}
		// Refused while waiting (the next Acquire learns when the key has
		// tokens again), or no grant: decide again.
	}
}

// awaitCentral waits for call's answer. It returns ctx's error if ctx ends
// first and ErrClosed if the Limiter closes first; the call is then
// withdrawn if it has not been sent (if it has, its share of the grant, if
// any, is lost: under-admission, never over).
func (l *Limiter) awaitCentral(ctx context.Context, call *centralCall, changed <-chan struct{}) (centralAnswer, error) {
	for {
		select {
		case a := <-call.done:
			return a, nil
		case <-ctx.Done():
			l.mu.Lock()
			call.gone = true
			l.mu.Unlock()
			return 0, ctx.Err()
		case <-changed:
			l.mu.Lock()
			if l.mu.closed {
				call.gone = true
				err := l.mu.closeErr
				l.mu.Unlock()
				return 0, err
			}
			changed = l.mu.changed
			l.mu.Unlock()
		}
	}
}

// sendCentral sends the waiting central requests, all of them in one
// Acquire, and answers each; it repeats while requests keep arriving. It runs
// on a goroutine the Client owns, one per Limiter at a time (mu.sending).
func (l *Limiter) sendCentral() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		calls := l.takeCallsLocked()
		if len(calls) == 0 {
			l.mu.sending = false
			return
		}
		if l.unusableLocked() != nil {
			answerAll(calls, centralAgain) // they find the error themselves
			continue
		}
		count, want := calls[0].n, int64(0)
		for _, c := range calls {
			count = min(count, c.n)
			want += c.n
		}
		span := l.centralSpanLocked()
		l.mu.Unlock()

		ctx, cancel := context.WithTimeout(l.c.base, l.c.cfg.requestTimeout)
		resp, at, err := l.c.acquire(ctx, l.key, l.item, count, want, 0, pacing{span: span, spanBuckets: !l.paced})
		cancel()
		recv := l.c.now()

		l.mu.Lock()
		if l.mu.closed {
			answerAll(calls, centralAgain)
			continue
		}
		if err == nil && l.paced {
			l.timeAnswerLocked(resp, at, recv)
		}
		if err != nil || !resp.GetAllowed() || resp.GetLeaseId() != 0 {
			// A denial of the smallest request covers them all. A lease
			// cannot answer a request with ttl 0; outcomeLocked keeps
			// it if one does.
			if dead := l.outcomeLocked(resp, at, recv, count, err); dead != nil {
				l.mu.Unlock()
				l.giveBack(dead.id, dead.kill())
				l.mu.Lock()
			}
			answer := centralAgain
			if err == nil && !resp.GetAllowed() {
				answer = centralDenied
				for _, c := range calls {
					l.mu.used += c.n // refused: demand all the same
				}
			}
			answerAll(calls, answer)
			if l.mu.unreachable {
				// The calls queued during this exchange decide again
				// too, and find its backoff: sent at once, every Wait
				// woken by the last backoff's end cost the cluster an
				// Acquire more (4 Waits on a full cluster: 12 in 20 s).
				for queued := l.takeCallsLocked(); len(queued) > 0; queued = l.takeCallsLocked() {
					answerAll(queued, centralAgain)
				}
			}
			continue
		}
		// Not outcomeLocked: it would also offer the grant to callers
		// blocked on the lease path (mu.direct), handing it out twice.
		l.answeredLocked(at.last, recv)
		l.lesseesLocked(resp)
		l.setDeniedLocked(denial{})
		left := resp.GetItems()[0].GetGranted()
		if resp.GetTtlNs() > 0 && !l.spanLiveLocked(resp, at) {
			// A grant answered after the span it may be spent in:
			// refused, never spent late. Nothing to give back: a
			// central grant is no lease.
			for _, c := range calls {
				l.mu.used += c.n
			}
			l.lateStreak.record(true)
			answerAll(calls, centralLate)
			continue
		}
		l.lateStreak.record(false)
		for _, c := range calls {
			l.mu.used += c.n // admitted or refused, it is demand
			if c.n > left {
				c.done <- centralRefused
				continue
			}
			left -= c.n
			c.done <- centralAdmitted
		}
		// Let the callers just answered run before taking the next batch:
		// in a closed loop they ask again at once, and would otherwise
		// miss this Acquire and wait a whole round trip for the next,
		// splitting a process's callers into two alternating halves
		// (measured: 32 requests per Acquire with 64 callers; 54 with the
		// yield, and 35.7k → 46–51k decisions/s). With nothing else to
		// run it costs a few hundred nanoseconds.
		l.mu.Unlock()
		runtime.Gosched()
		l.mu.Lock()
	}
}

// centralSpanFloor is the least span a sliding window's central decision
// asks to be counted over: half the shortest bucket a window set through
// the API counts in (fsm.WindowBucketLeast, 50ms). Measured, a span of
// half a bucket costs a saturated central window nothing it would not
// lose anyway, one bucket about a twentieth of the limit (DESIGN.md).
// centralSpanFirst is the span asked before any answer has been timed: a
// slow network's first answers would otherwise be refused.
// answerLagDecay is what the slowest recent answer's lag keeps of itself
// per answer since (about 60 answers to a twentieth).
const (
	centralSpanFloor = 25 * time.Millisecond
	centralSpanFirst = 250 * time.Millisecond
	answerLagDecay   = 0.95
)

// centralSpanLocked returns the span a central Acquire asks for
// (AcquireRequest.span_ns), within which its answer must arrive for it to
// be spent (spanLiveLocked). For a token bucket, the longest span there
// is: the cluster answers it cut to the key's MaxLease, the Λ of the
// bound, since the bound counts every token as spent at most Λ after the
// log time that granted it (fsm's Machine.acquire); a longer span would be
// outside the bound, a shorter one would refuse answers the bound covers.
// A cluster that predates that answers a token bucket's span with 0, and
// the grant is spent whenever it arrives, as before. For a sliding window,
// a short span that the cluster counts the grant over (in every slot
// window the span overlaps, as it counts a lease's life): twice the lag of
// recent answers (answerLag: the latest, or the slowest of the last few
// dozen decayed), at least centralSpanFloor (centralSpanFirst before any
// answer was timed), at most a quarter of the window: answers at usual latencies, and one now and
// then twice as slow as the slowest recent one, arrive within it; a longer
// span, only while answers are slow, costs a saturated window capacity
// only then. *Rejected:* twice the round-trip average (its weighted mean
// starts at 0 and lags behind a slower network: 1 of the first answers at
// 60ms was refused).
func (l *Limiter) centralSpanLocked() time.Duration {
	if !l.paced {
		return transport.MaxLeaseTTL
	}
	d := max(time.Duration(2*l.mu.answerLag), centralSpanFloor)
	if l.mu.answerLag == 0 {
		d = centralSpanFirst
	}
	return min(d, max(l.limit.Per/4, 1))
}

// timeAnswerLocked records the lag of a window's central answer read at
// recv to an Acquire sent at at: from the earliest its stamp may have been
// on our clock (lo) to recv, each sample at most a quarter of the window
// (no span is longer), for centralSpanLocked.
func (l *Limiter) timeAnswerLocked(resp *pb.AcquireResponse, at sendTimes, recv int64) {
	lo, _ := stampedWithin(resp, at.since, recv, l.c.cfg.drift)
	lag := min(float64(recv-lo), float64(l.limit.Per/4))
	l.mu.answerLag = max(lag, l.mu.answerLag*answerLagDecay)
}

// spanLiveLocked reports whether a central grant, answered with the span
// it may be spent in (ttl_ns) to an Acquire sent at at, may still be spent
// now: a window counted it over log time [T, T+ttl] from its stamp T (a
// token bucket's bound covers tokens spent up to ttl, its MaxLease, after
// T), and T was
// stamped no earlier than lo on our clock (stampedWithin: the send of the
// attempt the cluster decided, or the first send for an answer the dedup
// table remembered, plus the queue time the leader reports), so the span
// ends no earlier than lo + validity(ttl) on our clock, as a lease's life
// does. Spending a grant after its span could put it next to grants that
// the window allowed because this one had slid out of the slot windows it
// was counted in: up to twice the limit in one real window; on a token
// bucket, next to grants of the tokens refilled since, up to
// min(n, r·(late − Λ)) over B + r·(Δ+Λ).
func (l *Limiter) spanLiveLocked(resp *pb.AcquireResponse, at sendTimes) bool {
	now := l.c.now()
	lo, _ := stampedWithin(resp, at.since, now, l.c.cfg.drift)
	return now < lo+validity(time.Duration(resp.GetTtlNs()), l.c.cfg.drift)
}

// takeCallsLocked takes the waiting central requests, oldest first, up to
// maxCentralCalls and as many tokens as the key's burst (a grant is never
// more), dropping those whose callers left.
func (l *Limiter) takeCallsLocked() []*centralCall {
	var (
		calls  []*centralCall
		tokens int64
		taken  int
	)
	for _, c := range l.mu.calls {
		if c.gone {
			taken++
			continue
		}
		if len(calls) == maxCentralCalls || len(calls) > 0 && tokens+c.n > l.maxGrant {
			break
		}
		taken++
		calls = append(calls, c)
		tokens += c.n
	}
	clear(l.mu.calls[:taken])
	l.mu.calls = l.mu.calls[taken:]
	if len(l.mu.calls) == 0 {
		l.mu.calls = nil
	}
	return calls
}

func answerAll(calls []*centralCall, a centralAnswer) {
	for _, c := range calls {
		c.done <- a
	}
}
