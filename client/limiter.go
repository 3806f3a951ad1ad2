package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/limiter"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Tuning constants; DESIGN.md explains each.
const (
	// leaseAbove: a Limiter deciding centrally starts leasing once a lease
	// would be worth at least this many tokens to it (leaseWorthLocked:
	// its demand over a lease's life, at most its share of the key's
	// refill over that life).
	leaseAbove = 16
	// centralBelow: a leasing Limiter goes back to central decisions (an
	// Acquire per request, concurrent requests sharing one; central.go)
	// once a lease would be worth fewer tokens than this.
	centralBelow = 8
	// idleFraction: a lease may hold up to 1/idleFraction of what the key
	// held at its last answer, split among its lessees, whatever this
	// client's demand (idleShareLocked).
	idleFraction = 64
	// defaultMaxLease is the cluster's lease cap for a key whose limit
	// names none.
	defaultMaxLease = 2 * time.Second
	// allowRounds is how many times Allow asks the cluster: it joins a
	// refresh (or starts one), and if that leaves it no token, asks for a
	// central decision of its own.
	allowRounds = 2
)

// State is what a Limiter is doing. Values are stable.
type State int

const (
	// StateLeased: the Limiter admits from leases and refreshes them in the
	// background. It stays Leased while the cluster is unreachable as long
	// as it holds a valid lease.
	StateLeased State = 1
	// StateCentral: each request is one Acquire, decided by the cluster
	// (concurrent requests share one). A Limiter starts so, and leases
	// once its demand on the key makes a lease worth a few tokens; a key
	// whose limit is too small to share in leases among its clients, or a
	// strict bucket that grants no leases, stays so.
	StateCentral State = 2
	// StateFallback: the cluster is unreachable and no valid lease is left;
	// the failure policy decides.
	StateFallback State = 3
	// StateInvalid: the cluster rejected the key or its limit (or would):
	// nothing is admitted, and Wait returns why. A refusal an operator can
	// lift (no limit set, a certificate or role refused) is asked again
	// every 15–30 s while the key is used, and the key works once the
	// cluster accepts it.
	StateInvalid State = 4
	// StateClosed: the Client was closed.
	StateClosed State = 5
)

// String returns the state's name in lower case.
func (s State) String() string {
	switch s {
	case StateLeased:
		return "leased"
	case StateCentral:
		return "central"
	case StateFallback:
		return "fallback"
	case StateInvalid:
		return "invalid"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// errDenied is obtain's "not admitted" for Allow: a result, not an error.
// errUnreachable is the same when the cluster did not answer and the
// failure policy did not admit, errLate when a central grant was answered
// too late to spend (each counted apart in Stats).
var (
	errDenied      = errors.New("denied")
	errUnreachable = errors.New("denied: cluster unreachable")
	errLate        = errors.New("denied: central grant answered too late to spend")
)

// A Limiter admits requests against one key's limit, shared with every other
// client of the cluster. It spends tokens leased from the cluster, so Allow
// costs no round trip while tokens are held, and refreshes its leases in the
// background, sized from its recent rate of use. Get one from
// [Client.Limiter]. It is safe for concurrent use.
type Limiter struct {
	c      *Client
	key    string
	limit  Limit
	policy FailurePolicy
	item   *pb.Limit     // sent with every Acquire; read-only
	ttl    time.Duration // lease life asked for
	// paced: a sliding window, whose leases come in pieces (window.go).
	paced bool
	// expect is the lease life the cluster is expected to grant: ttl, at
	// most the limit's MaxLease (and a sliding window's length).
	expect time.Duration
	// keyRate is the limit's whole rate in tokens per nanosecond: no single
	// client can use more, so demand estimates are capped by it.
	keyRate  float64
	maxGrant int64 // the most tokens worth asking for at once: the burst
	// capacity is what the key can hold for leases: the burst, less a
	// strict bucket's reserve ⌈rate·MaxLease⌉ (the cluster's refill cap).
	capacity int64
	// stock is a copy of mu.stock for Decisions, read with no lock.
	stock atomic.Int64
	// owner is the Budget this Limiter is a rule of (budget.go), or nil:
	// its refreshes are the Budget's, and it is not in the Client's map.
	owner *Budget
	// lateStreak counts the central grants answered too late to spend in a
	// row: how long a Wait backs off before asking again.
	lateStreak lateStreak

	// head is the lease the fast path spends from: the valid lease that
	// expires first. nil when none is held.
	head       atomic.Pointer[lease]
	refreshing atomic.Bool  // a refresh goroutine is running
	notBefore  atomic.Int64 // no refresh starts from a trigger before this
	// denied is a copy of mu.denied (nil: none), so that AllowN refuses a
	// remembered denial with no lock; set only under mu.
	denied atomic.Pointer[denial]
	// refused counts the tokens AllowN refused on the strength of denied,
	// for the demand estimate; striped like a lease, summed under mu.
	refused [refusedStripes]counter

	mu struct {
		sync.Mutex
		leases []*lease // held, by deadline; leases[0] is head
		// central: requests are decided centrally (leaseWorthLocked is
		// below the mark; see chooseLocked). noLease: for good, as the
		// cluster grants this key no leases.
		central bool
		noLease bool
		// lessees is the key's lessees as the cluster last reported them
		// (AcquireResponse.lessees); 0: not known yet. stock is what the
		// key held after the last answer (ItemGrant.remaining); -1: not
		// known yet.
		lessees  int32
		stock    int64
		closed   bool
		closeErr error // once closed: what calls return (closedError, or ErrClosed)
		// err: the cluster rejected the key or limit (or would); nothing
		// is admitted. A refusal an operator can lift (retryable) is asked
		// again once the log time passes retryAt (askAgainLocked); never
		// for the others. reasking: that Acquire is out.
		err      error
		retryAt  int64
		reasking bool
		logged   bool  // err has been logged
		failures int   // consecutive failed exchanges with the cluster
		failErr  error // the last failed exchange's error, while unreachable
		// unreachable: the last exchange with the cluster failed (not a
		// denial: no answer).
		unreachable   bool
		fallbackSince int64 // when the current fallback began; -1 if none
		share         *limiter.TokenBucket
		shareState    limiter.BucketState
		denied        denial
		direct        int64   // tokens of a central grant for blocked callers
		directUntil   int64   // direct is void from then on
		needs         []int64 // tokens blocked callers want now
		// urgent counts the callers among needs whose deadline comes
		// before the pace ends (Budget.reserve): a refresh asks for them
		// despite the pace.
		urgent int
		// urgentAt is when a refresh last asked despite the pace (Client
		// clock): it asks so at most every urgentEvery.
		urgentAt int64
		calls    []*centralCall // central requests waiting for the next Acquire
		sending  bool           // a central sender goroutine is running
		changed  chan struct{}

		// leasedSpent counts the tokens spent from leases no longer held
		// (for Stats; a Budget rule's count its reservations' too).
		leasedSpent int64

		// Demand estimate: used counts tokens admitted or refused, except
		// those spent from leases still held; a lease's spending is
		// granted − tokens.
		used       int64
		lastDemand int64
		sampledAt  int64
		rate       float64 // tokens per ns, exponentially weighted
		fast       float64 // the same over a few round trips (sampleLocked)
		rtt        float64 // ns, exponentially weighted
		life       int64   // usable life of a lease (ns): measured, or expected
		// pacedEnd is the log time (ns) the last piece of the pieced
		// leases held ends at: where the next one should begin.
		pacedEnd int64
		// lastPieced is the last pieced lease installed, all its pieces,
		// for strandedLocked (window.go); id 0: none.
		lastPieced piecedLease
		// pieceNs is the width of the last pieced lease's buckets (ns),
		// for pacedLocked; 0: none seen yet. pieceBlur is what it weighs:
		// how long the instant each answer was stamped is uncertain on
		// our clock, the round trip less what the cluster reports it
		// held the request before and after the stamp (ns, exponentially
		// weighted, each sample capped at two buckets: answeredLocked).
		pieceNs   int64
		pieceBlur float64
		// answerLag is how long a sliding window's central answers take
		// from the earliest their stamp may have been (ns; 0: none seen):
		// the latest, or what the slowest recent one decayed to, for the
		// span the next one asks (centralSpanLocked).
		answerLag float64
	}
}

// refusedStripes is the number of counters Limiter.refused is split over.
const refusedStripes = 8

// counter is an atomic count alone on its cache line.
type counter struct {
	n atomic.Int64
	_ [56]byte
}

// denial is a recent "no" from the cluster.
type denial struct {
	count int64 // for this many tokens or more
	until int64 // until this time on the Client's clock; never: ever
	// pace: not a refusal but the pace of a grant short of its want on a
	// contended key (fsm/DESIGN.md, "Grants"): advice on when to ask
	// again, while the key may well hold what a caller needs now.
	pace bool
}

func newLimiter(c *Client, key string, limit Limit) *Limiter {
	l := &Limiter{c: c, key: key, limit: limit, policy: limit.FailurePolicy, item: limit.proto()}
	if l.policy == nil {
		l.policy = c.cfg.policy
	}
	l.mu.changed = make(chan struct{})
	l.mu.fallbackSince = -1
	l.mu.urgentAt = math.MinInt64 / 2 // never
	if err := limit.check(key); err != nil {
		l.mu.err, l.mu.retryAt = err, never
		return l
	}

	// Ask for as long a lease as the key allows; expect the cluster's cap.
	ttl := transport.MaxLeaseTTL
	if c.cfg.leaseTTL > 0 {
		ttl = c.cfg.leaseTTL
	}
	expect := defaultMaxLease
	if limit.MaxLease > 0 {
		ttl = min(ttl, limit.MaxLease)
		expect = limit.MaxLease
	}
	expect = min(expect, ttl)
	if limit.Algorithm == SlidingWindow {
		expect = min(expect, limit.Per)
	}
	l.ttl, l.expect = ttl, expect
	l.paced = limit.Algorithm == SlidingWindow
	l.keyRate = float64(limit.Rate) / float64(limit.Per)
	l.maxGrant = limit.burst()
	l.capacity = l.maxGrant
	if limit.Strict && limit.Algorithm != SlidingWindow {
		reserve := math.Ceil(float64(limit.Rate) * float64(expect) / float64(limit.Per))
		l.capacity = max(0, l.maxGrant-int64(min(reserve, float64(l.maxGrant))))
	}

	now := c.now()
	l.mu.life = validity(expect, c.cfg.drift)
	l.mu.sampledAt = now
	// A new Limiter knows nothing of its demand: it decides centrally (one
	// request per decision, no token held for later) until its demand
	// makes a lease worth it (chooseLocked). A strict bucket whose reserve
	// is its whole burst grants no leases at all.
	l.mu.central = true
	l.mu.noLease = l.capacity == 0
	l.mu.stock = -1
	if p, ok := l.policy.(FallbackShare); ok {
		l.mu.share = shareBucket(limit, p.Clients)
	}
	return l
}

// Key returns the key l limits.
func (l *Limiter) Key() string { return l.key }

// Limit returns the limit l was made with.
func (l *Limiter) Limit() Limit { return l.limit }

// Allow reports whether one token may be spent now; it is AllowN(1).
func (l *Limiter) Allow() bool { return l.AllowN(1) }

// AllowN reports whether n tokens may be spent now, and spends them if so.
// n = 0 is always allowed; n < 0 never is.
//
// While l holds enough tokens on a valid lease, AllowN takes them with no
// network call, no lock and no allocation; falling below the refresh mark
// starts a refresh in the background. Without enough tokens it asks the
// cluster and waits for the answer (at most the request timeout), unless the
// cluster recently said no or paced this client's last lease on a contended
// key (then false at once, until its retry-after or pace) or is unreachable
// (then the failure policy decides at once). In StateCentral, every call is
// one Acquire.
//
// A lease is used only while l's monotonic clock, read in the same call, is
// before its deadline, so a process paused past a lease's life wakes up to
// an expired lease.
func (l *Limiter) AllowN(n int64) bool {
	ls := l.head.Load()
	var now int64
	if ls != nil && n > 0 {
		now = l.c.now()
		if now < ls.deadline && now >= ls.start {
			s, salt := ls.pick()
			for t := s.tokens.Load(); t >= n; t = s.tokens.Load() {
				if s.tokens.CompareAndSwap(t, t-n) {
					if t-n < s.low.Load() || now >= ls.refreshAt.Load() {
						l.kick(now)
					}
					if tr := l.c.trace; tr != nil {
						tr.admit(l.key, n, ls.id, AdmitLeased)
					}
					return true
				}
				ls.collided(salt)
			}
		}
	}
	// A remembered denial with no lease held, or none begun (the next
	// piece of a pieced lease): refuse with no lock, no context and no
	// network call, as obtain would (see deny).
	if d := l.denied.Load(); d != nil && n > 0 && n >= d.count && (ls == nil || now < ls.start) {
		if now := l.c.now(); now < d.until {
			if d.until != never {
				l.countRefused(n)
			}
			if d.until != never {
				l.c.stats.add(statDeniedCluster, 1)
			} else {
				l.c.stats.add(statDeniedUnusable, 1)
			}
			if acquiring.Load() > 0 {
				// An Acquire is in flight in this process: give way to
				// the goroutines that read and install its answer (see
				// acquiring).
				runtime.Gosched()
			}
			return false
		}
	}
	return l.allowSlow(n)
}

// setDeniedLocked remembers d (the zero denial: none), for obtain and for
// AllowN's lock-free check.
func (l *Limiter) setDeniedLocked(d denial) {
	if d == l.mu.denied {
		return
	}
	l.mu.denied = d
	if d == (denial{}) {
		l.denied.Store(nil)
		return
	}
	l.denied.Store(&d)
}

// refuseUntilLocked refuses requests of count tokens or more that held
// leases do not cover, and starts no Acquire, until until.
func (l *Limiter) refuseUntilLocked(count, until int64) {
	l.setDeniedLocked(denial{count: count, until: until})
	l.notBefore.Store(until)
}

// urgentLocked reports whether a refresh should ask the cluster before the
// pace ends, for callers who cannot wait for it.
func (l *Limiter) urgentLocked() bool { return l.mu.urgent > 0 && l.mu.denied.pace }

// urgentEvery returns the least time between two refreshes that ask
// despite the pace: a sixteenth of a lease's life (125ms for Λ = 2s). A
// saturated key refills only so fast, and every process near its callers'
// deadlines asks: each asking as soon as the last answer came would make
// about an Acquire per call; this spacing makes at most 16 per lease life
// instead of the pace's one, and leaves at most a sixteenth of a life's
// refill in the key when the deadline comes.
func (l *Limiter) urgentEvery() int64 { return max(l.mu.life/16, int64(time.Millisecond)) }

// paceUntilLocked is refuseUntilLocked for a grant's pace: the same
// refusal, marked as a pace, which a Budget's caller whose deadline comes
// first does not wait for (see Budget.reserve).
func (l *Limiter) paceUntilLocked(until int64) {
	l.setDeniedLocked(denial{count: 1, until: until, pace: true})
	l.notBefore.Store(until)
}

func (l *Limiter) allowSlow(n int64) bool {
	switch {
	case n == 0:
		return true
	case n < 0:
		return false
	}
	// A refresh reports its outcome within the request timeout; this
	// deadline is only a safety net behind it, so that Allow sees the
	// outcome (and, if the cluster is unreachable, applies the policy)
	// rather than giving up a moment before.
	ctx, cancel := context.WithTimeout(l.c.base, 2*l.c.cfg.requestTimeout)
	defer cancel()
	switch err := l.obtain(ctx, n, false); err {
	case nil:
		return true // counted where the tokens came from
	case errDenied:
		l.c.stats.add(statDeniedCluster, 1)
	case errUnreachable:
		l.c.stats.add(statDeniedUnreachable, 1)
	case errLate:
		l.c.stats.add(statDeniedLate, 1)
	default:
		l.c.stats.add(statDeniedUnusable, 1)
	}
	return false
}

// Wait blocks until one token can be spent, and spends it; it is WaitN(ctx, 1).
func (l *Limiter) Wait(ctx context.Context) error { return l.WaitN(ctx, 1) }

// WaitN blocks until n tokens can be spent and spends them, or returns an
// error if they cannot be before ctx ends. With ctx already ended it
// returns ctx's error and spends nothing, as golang.org/x/time/rate's WaitN
// does, a lease held or not; else n = 0 returns nil at once.
//
// When the cluster says how long to wait (a denial's retry-after, or the pace
// of a short lease on a contended key) and that is past ctx's deadline,
// WaitN returns ErrWouldExceedDeadline at once, as golang.org/x/time/rate
// does. It returns ErrExceedsLimit if n is more than the limit ever admits at
// once, the *transport.InvalidError (or transport.ErrNoLimit) if the cluster
// rejects the key or limit, and ErrClosed after Close. While the cluster is
// unreachable and no valid lease is left, the failure policy decides:
// FailOpen returns nil, a FallbackShare waits for its local share, and
// FailClosed waits for the cluster until ctx ends (then the error matches
// ErrUnavailable and ctx's error, and, if the cluster refused the key or
// client as full, begins with and matches its *transport.FullError). A
// Wait for more than the leases still hold is not in fallback yet: it waits
// for the cluster, or for the leases to end, when the policy decides, and
// whatever the policy, if ctx ends first it gives up the same way.
func (l *Limiter) WaitN(ctx context.Context, n int64) error {
	switch {
	case n < 0:
		return fmt.Errorf("leasehold: WaitN(%d): n must not be negative", n)
	case ctx.Err() != nil:
		return ctx.Err()
	case n == 0:
		return nil
	}
	if ls := l.head.Load(); ls != nil {
		if now, s := l.c.now(), ls.stripe(); now < ls.deadline && now >= ls.start && s.take(n) {
			if s.tokens.Load() < s.low.Load() || now >= ls.refreshAt.Load() {
				l.kick(now)
			}
			if tr := l.c.trace; tr != nil {
				tr.admit(l.key, n, ls.id, AdmitLeased)
			}
			return nil
		}
	}
	return l.obtain(ctx, n, true)
}

// State returns what l is doing now.
func (l *Limiter) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()

	switch {
	case l.mu.closed:
		return StateClosed
	case l.mu.err != nil:
		return StateInvalid
	case l.mu.unreachable && l.heldLocked(l.c.now()) == 0:
		return StateFallback
	case l.mu.central:
		return StateCentral
	}
	return StateLeased
}

// obtain is the slow path of Allow (wait false: nil or errDenied at once
// once the cluster has answered, or the policy decided) and Wait (wait true:
// blocks until admitted or ctx ends).
func (l *Limiter) obtain(ctx context.Context, n int64, wait bool) error {
	for round := 0; ; round++ {
		l.mu.Lock()
		now := l.c.now()
		if err := l.unusableLocked(); err != nil {
			ask := l.askAgainLocked(now)
			l.mu.Unlock()
			if ask {
				l.start()
			}
			return err
		}
		switch {
		case l.spendLocked(now, n):
			l.mu.Unlock()
			return nil
		case l.chooseLocked(now):
			l.mu.Unlock()
			return l.obtainCentral(ctx, n, wait)
		}
		if d := l.mu.denied; n >= d.count && now < d.until {
			l.mu.Unlock()
			if err := l.deny(ctx, n, now, d.until, wait); err != nil {
				return err
			}
			continue
		}
		if l.mu.unreachable {
			if l.heldLocked(now) == 0 {
				if done, err := l.fallback(ctx, n, now, wait); done {
					return err
				}
				continue
			}
			// Some tokens held, not enough: no point asking the
			// cluster in the foreground.
			if !wait {
				l.mu.used += n
				l.mu.Unlock()
				l.kick(now)
				return errUnreachable
			}
		} else if !wait && round >= allowRounds-1 {
			// The refreshes this caller waited for did not leave it a
			// token (other callers spent them first): the cluster
			// decides this request on its own, so that Allow refuses
			// only on the cluster's word, never for want of a lease.
			l.mu.Unlock()
			return l.obtainCentral(ctx, n, false)
		}
		// Ask the cluster, or join the refresh in flight, and wait for its
		// outcome; a waiter also wakes when the first held lease expires.
		// While the cluster is unreachable (a Wait for more than the
		// leases still hold), the refresh waits out the last failure's
		// backoff: kick, not start, as in fallback, or a Wait woken by one
		// refresh's failure, or coming after it, sent the next Acquire at
		// once (to a full cluster, one per Wait). The waiter wakes when
		// the backoff ends to kick one itself if none runs. While the
		// cluster answers, ask at once: a request for fewer tokens than a
		// denial's count may fit.
		ch := l.mu.changed
		wake := int64(never)
		if at := l.nextExpiryLocked(now); at != never {
			wake = at - now
		}
		backoff := l.mu.unreachable
		if nb := l.notBefore.Load(); backoff && nb > now {
			wake = min(wake, nb-now)
		}
		l.mu.needs = append(l.mu.needs, n)
		l.mu.Unlock()
		if backoff {
			l.kick(now)
		} else {
			l.start()
		}
		err := waitChange(ctx, ch, wake)
		l.mu.Lock()
		if i := slices.Index(l.mu.needs, n); i >= 0 {
			l.mu.needs = slices.Delete(l.mu.needs, i, i+1)
		}
		if err != nil && wait && l.mu.unreachable {
			// Gave up short of what the leases hold, the cluster
			// unreachable or full: as in fallback.
			err = l.unavailableLocked(err)
		}
		l.mu.Unlock()
		if err != nil {
			if !wait {
				return errUnreachable // no outcome in time
			}
			return err
		}
	}
}

// deny handles a request the cluster recently refused until `until`: Allow
// gets errDenied; Wait fails fast if ctx's deadline comes first, else sleeps
// until then (nil: try again).
func (l *Limiter) deny(ctx context.Context, n, now, until int64, wait bool) error {
	if until == never {
		return fmt.Errorf("%w: %d tokens from %q", ErrExceedsLimit, n, l.key)
	}
	if !wait {
		l.mu.Lock()
		l.mu.used += n
		l.mu.Unlock()
		return errDenied
	}
	return l.sleepUntil(ctx, now, until)
}

// unusableLocked returns ErrClosed once the limiter is closed, or the
// cluster's rejection of its key or limit (logged once), or nil.
func (l *Limiter) unusableLocked() error {
	switch {
	case l.mu.closed:
		return l.mu.closeErr
	case l.mu.err != nil:
		l.logErrLocked()
		return l.mu.err
	}
	return nil
}

// askAgainLocked reports whether the caller should start the refresh that
// asks the cluster again about a key it refused (l.mu.err): the refusal is
// one an operator can lift (retryAt, see rejectLocked), its backoff has
// passed at now, and the key is no Budget's (the Budget asks for its
// rules). It claims the ask: the next may go a refusal backoff later, even
// if this one gets no answer.
func (l *Limiter) askAgainLocked(now int64) bool {
	if l.mu.closed || l.mu.err == nil || l.owner != nil || l.mu.reasking || now < l.mu.retryAt {
		return false
	}
	l.mu.retryAt = now + int64(refusalBackoff())
	l.mu.reasking = true
	return true
}

// rejectLocked records the cluster's rejection of l's key, err: nothing
// is admitted, whatever the failure policy, until the cluster is asked
// again at retryAt (never: a refusal no operator can lift, refusalRetry)
// and accepts the key.
func (l *Limiter) rejectLocked(err error, retryAt int64) {
	l.mu.err = fmt.Errorf("leasehold: key %q: %w", l.key, err)
	l.mu.retryAt = retryAt
	if l.owner != nil && retryAt != never {
		// Whichever exchange refused it (the Budget's, or this rule's own
		// refresh), its Budget asks again then (askRefused).
		l.owner.reaskAt.Store(retryAt)
	}
	l.logErrLocked()
}

// acceptedLocked records that the cluster answered an Acquire of l's key:
// a refusal it made earlier is lifted, and the key works again.
func (l *Limiter) acceptedLocked() {
	if l.mu.err == nil || l.mu.retryAt == never {
		return
	}
	l.c.log.Info("leasehold: key accepted again", "key", l.key, "was", l.mu.err)
	l.mu.err, l.mu.retryAt, l.mu.logged = nil, 0, false
}

// logErrLocked logs the sticky error once.
func (l *Limiter) logErrLocked() {
	if !l.mu.logged {
		l.mu.logged = true
		l.c.log.Warn("leasehold: key rejected; its Limiter admits nothing", "key", l.key, "err", l.mu.err)
	}
}

// notifyLocked wakes every caller blocked on l.mu.changed.
func (l *Limiter) notifyLocked() {
	close(l.mu.changed)
	l.mu.changed = make(chan struct{})
}

// shutdown marks l closed and every lease dead, and returns the leases to
// give back. Blocked callers wake up to why (ErrClosed, or a closedError).
func (l *Limiter) shutdown(now int64, why error) []release {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		return nil
	}
	l.mu.closed, l.mu.closeErr = true, why
	l.fallbackEndedLocked(now)
	l.head.Store(nil)
	var rels []release
	for _, ls := range l.mu.leases {
		// An expired lease is over for the cluster too: nothing to give
		// back, and a Release would cost a Raft write for nothing.
		unused := ls.kill()
		l.mu.leasedSpent += ls.granted - unused
		if ls.id != 0 && now < ls.deadline {
			if k := len(rels) - 1; k >= 0 && rels[k].id == ls.id {
				// Pieces of one lease, in order: one release gives back
				// the rest of this one and all of those after it.
				rels[k].unused += unused
				continue
			}
			rels = append(rels, release{key: l.key, id: ls.id, unused: unused})
		}
	}
	l.mu.leases = nil
	if l.owner == nil {
		l.c.stats.closedLeased.Add(uint64(max(0, l.mu.leasedSpent)))
		l.mu.leasedSpent = 0
	}
	l.notifyLocked()
	return rels
}

// waitChange waits until ch is closed, d passes (d < 0 or never: no limit),
// or ctx ends.
func waitChange(ctx context.Context, ch <-chan struct{}, d int64) error {
	if d >= 0 && d < never {
		t := time.NewTimer(time.Duration(d))
		defer t.Stop()
		select {
		case <-ch:
			return nil
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleepUntil sleeps from now until at (Client clock), or fails fast with
// ErrWouldExceedDeadline if ctx's deadline comes first. It returns ctx's
// error if ctx ends first, and ErrClosed as soon as Close begins.
func (l *Limiter) sleepUntil(ctx context.Context, now, at int64) error {
	d := time.Duration(at - now)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return fmt.Errorf("%w: admitted in %v at the earliest", ErrWouldExceedDeadline, d)
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.c.closing:
		return ErrClosed
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
