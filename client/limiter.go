package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
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
	// centralBelow: a key whose whole rate over one lease's life is fewer
	// tokens than this is decided centrally: no leases, an Acquire per
	// request (concurrent requests share one; central.go).
	centralBelow = 4
	// defaultMaxLease is the cluster's lease cap for a key whose limit
	// names none.
	defaultMaxLease = 2 * time.Second
	// initialShare is the fraction of the key's rate a new Limiter assumes
	// it uses, until it has measured its own.
	initialShare = 1.0 / 8
	// allowRounds is how many times Allow asks the cluster (or joins a
	// refresh in flight) before it gives up.
	allowRounds = 2
)

// Algorithm selects how a key limits. Values are stable.
type Algorithm int

const (
	// TokenBucket admits Rate tokens per Per on average, and up to Burst at
	// once. The zero Algorithm means TokenBucket.
	TokenBucket Algorithm = 1
	// SlidingWindow admits at most Rate tokens in any window of length Per.
	SlidingWindow Algorithm = 2
)

// String returns "token-bucket" or "sliding-window".
func (a Algorithm) String() string {
	switch a {
	case 0, TokenBucket:
		return "token-bucket"
	case SlidingWindow:
		return "sliding-window"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// A Limit defines a key's limit. The cluster keeps the first definition it
// sees for a key (sent with the first Acquire, or set by an operator); a
// different Limit sent later is ignored until the key is forgotten.
type Limit struct {
	// Algorithm is TokenBucket (the default) or SlidingWindow.
	Algorithm Algorithm
	// Rate is the tokens admitted per Per: refilled per Per (token bucket)
	// or admitted in any window of length Per (sliding window). Positive.
	Rate int64
	// Per is the refill period or the window length. Positive.
	Per time.Duration
	// Burst is a token bucket's capacity: the most admitted at once. 0
	// means Rate. Ignored by a sliding window.
	Burst int64
	// Slots is the number of sub-windows of a sliding window, 1 to 64; 0
	// means 10. Ignored by a token bucket.
	Slots int
	// Strict makes a token bucket admit at most Burst + Rate·Δ in any
	// interval Δ, over all clients, by holding back Rate·MaxLease of the
	// burst; if that is the whole burst the key grants no leases and every
	// request is a central decision. Not strict, the cluster's bound is
	// Burst + Rate·(Δ + MaxLease).
	Strict bool
	// MaxLease is the longest lease the cluster grants on this key, the Λ
	// of its over-admission bound. 0 means 2s; at most 1 minute.
	MaxLease time.Duration
	// FailurePolicy overrides the Client's (WithFailurePolicy) for this
	// key; nil means the Client's.
	FailurePolicy FailurePolicy
}

// proto returns l as sent with each Acquire.
func (l Limit) proto() *pb.Limit {
	p := &pb.Limit{
		Algorithm:  pb.Algorithm_TOKEN_BUCKET,
		Limit:      l.Rate,
		PeriodNs:   int64(l.Per),
		Burst:      l.Burst,
		Slots:      int32(min(max(l.Slots, math.MinInt32), math.MaxInt32)),
		Strict:     l.Strict,
		MaxLeaseNs: int64(l.MaxLease),
	}
	switch l.Algorithm {
	case SlidingWindow:
		p.Algorithm = pb.Algorithm_SLIDING_WINDOW
	case 0, TokenBucket:
	default:
		p.Algorithm = pb.Algorithm(l.Algorithm) // rejected by validation
	}
	return p
}

// check validates key and l as the cluster would, plus the failure policy.
func (l Limit) check(key string) error {
	var errs []error
	switch {
	case key == "":
		errs = append(errs, &transport.InvalidError{Field: "key", Reason: "key is empty"})
	case len(key) > transport.MaxKeyLen:
		errs = append(errs, &transport.InvalidError{Field: "key",
			Reason: fmt.Sprintf("key is %d bytes; the most is %d", len(key), transport.MaxKeyLen)})
	}
	if l.Algorithm != 0 && l.Algorithm != TokenBucket && l.Algorithm != SlidingWindow {
		errs = append(errs, &transport.InvalidError{Field: "limit.algorithm",
			Reason: fmt.Sprintf("unknown algorithm %d; want TokenBucket or SlidingWindow", int(l.Algorithm))})
	} else if err := transport.ValidateLimit("limit", l.proto()); err != nil {
		errs = append(errs, err)
	}
	if l.FailurePolicy != nil {
		if err := validatePolicy(l.FailurePolicy); err != nil {
			errs = append(errs, &transport.InvalidError{Field: "limit.failure_policy", Reason: err.Error()})
		}
	}
	return errors.Join(errs...)
}

// burst returns the most tokens the limit admits at once.
func (l Limit) burst() int64 {
	if l.Algorithm == SlidingWindow || l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}

// State is what a Limiter is doing. Values are stable.
type State int

const (
	// StateLeased: the Limiter admits from leases and refreshes them in the
	// background. It stays Leased while the cluster is unreachable as long
	// as it holds a valid lease.
	StateLeased State = 1
	// StateCentral: the key's limit is too small to lease (or a strict
	// bucket grants no leases): each request is one Acquire, decided by the
	// cluster.
	StateCentral State = 2
	// StateFallback: the cluster is unreachable and no valid lease is left;
	// the failure policy decides.
	StateFallback State = 3
	// StateInvalid: the cluster rejected the key or its limit (or would):
	// nothing is admitted, and Wait returns why.
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
var errDenied = errors.New("denied")

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
	// keyRate is the limit's whole rate in tokens per nanosecond: no single
	// client can use more, so demand estimates are capped by it.
	keyRate  float64
	maxGrant int64 // the most tokens worth asking for at once: the burst

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
		leases   []*lease // held, by deadline; leases[0] is head
		central  bool
		closed   bool
		err      error // sticky: the cluster rejected the key or limit
		logged   bool  // err has been logged
		failures int   // consecutive failed exchanges with the cluster
		// unreachable: the last exchange with the cluster failed (not a
		// denial: no answer).
		unreachable   bool
		fallbackSince int64 // when the current fallback began; -1 if none
		share         *limiter.TokenBucket
		shareState    limiter.BucketState
		denied        denial
		direct        int64          // tokens of a central grant for blocked callers
		directUntil   int64          // direct is void from then on
		needs         []int64        // tokens blocked callers want now
		calls         []*centralCall // central requests waiting for the next Acquire
		sending       bool           // a central sender goroutine is running
		changed       chan struct{}

		// Demand estimate: used counts tokens admitted or refused, except
		// those spent from leases still held; a lease's spending is
		// granted − tokens.
		used       int64
		lastDemand int64
		sampledAt  int64
		rate       float64 // tokens per ns, exponentially weighted
		rtt        float64 // ns, exponentially weighted
		life       int64   // usable life of a lease (ns): measured, or expected
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
}

func newLimiter(c *Client, key string, limit Limit) *Limiter {
	l := &Limiter{c: c, key: key, limit: limit, policy: limit.FailurePolicy, item: limit.proto()}
	if l.policy == nil {
		l.policy = c.cfg.policy
	}
	l.mu.changed = make(chan struct{})
	l.mu.fallbackSince = -1
	if err := limit.check(key); err != nil {
		l.mu.err = err
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
	l.ttl = ttl
	l.keyRate = float64(limit.Rate) / float64(limit.Per)
	l.maxGrant = limit.burst()

	now := c.now()
	l.mu.life = validity(expect, c.cfg.drift)
	l.mu.sampledAt = now
	l.mu.rate = l.keyRate * initialShare
	// Too few tokens per lease to be worth leasing, or a strict bucket
	// whose burst cannot cover a lease's refill: decide centrally.
	if l.keyRate*float64(l.mu.life) < centralBelow {
		l.mu.central = true
	}
	if limit.Strict && limit.Algorithm != SlidingWindow {
		reserve := math.Ceil(float64(limit.Rate) * float64(expect) / float64(limit.Per))
		if reserve >= float64(l.maxGrant) {
			l.mu.central = true
		}
	}
	if p, ok := l.policy.(FallbackShare); ok {
		l.mu.share = shareBucket(limit, p.Clients)
	}
	return l
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
	if ls != nil && n > 0 {
		now := l.c.now()
		if now < ls.deadline {
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
	// A remembered denial with no lease held: refuse with no lock, no
	// context and no network call, as obtain would (see deny).
	if d := l.denied.Load(); d != nil && n > 0 && n >= d.count && ls == nil {
		if now := l.c.now(); now < d.until {
			if d.until != never {
				l.countRefused(n)
			}
			return false
		}
	}
	return l.allowSlow(n)
}

// countRefused adds n to the tokens refused without the lock, on a counter
// picked by the calling goroutine's stack address (sticky per goroutine).
func (l *Limiter) countRefused(n int64) {
	l.refused[stackHash(0)%refusedStripes].n.Add(n)
}

// refusedTotal returns the tokens counted by countRefused so far.
func (l *Limiter) refusedTotal() int64 {
	var n int64
	for i := range l.refused {
		n += l.refused[i].n.Load()
	}
	return n
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
	return l.obtain(ctx, n, false) == nil
}

// Wait blocks until one token can be spent, and spends it; it is WaitN(ctx, 1).
func (l *Limiter) Wait(ctx context.Context) error { return l.WaitN(ctx, 1) }

// WaitN blocks until n tokens can be spent and spends them, or returns an
// error if they cannot be before ctx ends. n = 0 returns nil at once.
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
// ErrUnavailable and ctx's error).
func (l *Limiter) WaitN(ctx context.Context, n int64) error {
	switch {
	case n == 0:
		return nil
	case n < 0:
		return fmt.Errorf("leasehold: WaitN(%d): n must not be negative", n)
	}
	if ls := l.head.Load(); ls != nil {
		if now, s := l.c.now(), ls.stripe(); now < ls.deadline && s.take(n) {
			if s.tokens.Load() < s.low.Load() || now >= ls.refreshAt.Load() {
				l.kick(now)
			}
			if tr := l.c.trace; tr != nil {
				tr.admit(l.key, n, ls.id, AdmitLeased)
			}
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
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
		if err := l.unusableLocked(); err != nil {
			l.mu.Unlock()
			return err
		}
		now := l.c.now()
		switch {
		case l.spendLocked(now, n):
			l.mu.Unlock()
			return nil
		case l.mu.central:
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
				return errDenied
			}
		} else if !wait && round >= allowRounds {
			l.mu.used += n
			l.mu.Unlock()
			return errDenied
		}
		// Ask the cluster, or join the refresh in flight, and wait for its
		// outcome; a waiter also wakes when the first held lease expires.
		ch := l.mu.changed
		wake := int64(never)
		if at := l.nextExpiryLocked(now); at != never {
			wake = at - now
		}
		l.mu.needs = append(l.mu.needs, n)
		l.mu.Unlock()
		l.start()
		err := waitChange(ctx, ch, wake)
		l.mu.Lock()
		if i := slices.Index(l.mu.needs, n); i >= 0 {
			l.mu.needs = slices.Delete(l.mu.needs, i, i+1)
		}
		l.mu.Unlock()
		if err != nil {
			if !wait {
				return errDenied
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
	return sleepUntil(ctx, now, until)
}

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
		l.c.log.Warn("leasehold: cluster unreachable and no valid lease left; following the failure policy",
			"key", l.key, "policy", l.policy)
	}
	retryAt := int64(-1) // when the share admits n; -1: not at all
	switch p := l.policy.(type) {
	case FailMode:
		if p == FailOpen {
			l.mu.used += n
			l.mu.Unlock()
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
		return true, errDenied
	}
	if retryAt >= 0 {
		l.mu.Unlock()
		l.kick(now)
		if err := sleepUntil(ctx, now, retryAt); err != nil {
			return true, err
		}
		return false, nil
	}
	// Closed: wait for the cluster to come back. In the leased mode the
	// refresh retries while callers wait; in the central mode the caller
	// asks again once the backoff has passed.
	ch := l.mu.changed
	wake := int64(never)
	if nb := l.notBefore.Load(); nb > now {
		wake = nb - now
	}
	l.mu.needs = append(l.mu.needs, n)
	l.mu.Unlock()
	l.start()
	err = waitChange(ctx, ch, wake)
	l.mu.Lock()
	if i := slices.Index(l.mu.needs, n); i >= 0 {
		l.mu.needs = slices.Delete(l.mu.needs, i, i+1)
	}
	l.mu.Unlock()
	if err != nil {
		return true, fmt.Errorf("%w (key %q): %w", ErrUnavailable, l.key, err)
	}
	return false, nil
}

// unusableLocked returns ErrClosed once the limiter is closed, or the
// cluster's rejection of its key or limit (logged once), or nil.
func (l *Limiter) unusableLocked() error {
	switch {
	case l.mu.closed:
		return ErrClosed
	case l.mu.err != nil:
		l.logErrLocked()
		return l.mu.err
	}
	return nil
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

// start starts a refresh unless one is running.
func (l *Limiter) start() {
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
		if l.mu.closed || l.mu.err != nil || l.mu.central {
			return
		}
		now := l.c.now()
		count, want, due := l.planLocked(now)
		if !due {
			l.publishLocked(now)
			return
		}
		l.mu.direct = 0 // a central grant nobody took is stale by now
		l.mu.Unlock()

		ctx, cancel := context.WithTimeout(l.c.base, l.c.cfg.requestTimeout)
		resp, sent, err := l.c.acquire(ctx, l.key, l.item, count, want, l.ttl)
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
		if dead := l.outcomeLocked(resp, sent, recv, count, err); dead != nil {
			// It expired on the way here (a very slow reply, or a pause):
			// every token is unused.
			l.mu.Unlock()
			l.giveBack(dead.id, dead.kill())
			l.mu.Lock()
		}
		if !l.mu.unreachable || len(l.mu.needs) == 0 {
			return
		}
		// Callers are blocked and the cluster cannot be reached: let them
		// see it (their policy may admit them), back off and try again.
		l.notifyLocked()
		backoff := jitter(l.mu.failures)
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
// sent and answered at recv: a lease to install, a central grant to hand
// out, a denial, a rejection or a failure to reach the cluster. It returns a
// lease that was already dead on arrival, for the caller to release.
func (l *Limiter) outcomeLocked(resp *pb.AcquireResponse, sent, recv, count int64, err error) (dead *lease) {
	switch {
	case err == nil:
		l.answeredLocked(sent, recv)
		if !resp.GetAllowed() {
			until := int64(never)
			if r := resp.GetRetryAfterNs(); r >= 0 {
				until = recv + max(r, 1)
			}
			l.refuseUntilLocked(count, until)
			return nil
		}
		granted := resp.GetItems()[0].GetGranted()
		ttl := time.Duration(resp.GetTtlNs())
		if pace := resp.GetRetryAfterNs(); pace > 0 {
			// A lease short of its want on a contended key: the cluster
			// says when this client's next share will be there. Until
			// then, what the lease does not cover is refused like a
			// denial, and no refresh starts.
			l.refuseUntilLocked(1, recv+pace)
		} else {
			l.setDeniedLocked(denial{})
		}
		if ttl <= 0 || resp.GetLeaseId() == 0 {
			// A central decision: the key grants no leases (a strict
			// bucket whose burst cannot cover a lease). Hand the grant to
			// the blocked callers, and decide centrally from now on.
			if !l.mu.central {
				l.mu.central = true
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
		l.mu.err = fmt.Errorf("leasehold: key %q: %w", l.key, err)
		l.logErrLocked()
	default:
		l.mu.failures++
		l.notBefore.Store(recv + int64(jitter(l.mu.failures)))
		if !l.mu.unreachable {
			l.mu.unreachable = true
			l.c.log.Warn("leasehold: cannot reach the cluster; spending held leases, then following the failure policy",
				"key", l.key, "policy", l.policy, "err", err)
		}
	}
	return nil
}

// answeredLocked records that the cluster answered a request sent at sent
// at recv: it is reachable, and the round trip took recv − sent.
func (l *Limiter) answeredLocked(sent, recv int64) {
	l.recoverLocked()
	l.mu.rtt = ewma(l.mu.rtt, float64(recv-sent), 0.25)
}

// recoverLocked records that the cluster answered.
func (l *Limiter) recoverLocked() {
	if l.mu.unreachable {
		l.c.log.Info("leasehold: cluster reachable again", "key", l.key)
	}
	l.mu.unreachable = false
	l.mu.failures = 0
	l.mu.fallbackSince = -1
	l.notBefore.Store(0)
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

// spendLocked spends n tokens from central grants or held leases, oldest
// deadline first, if they hold enough at now.
func (l *Limiter) spendLocked(now, n int64) bool {
	if l.mu.direct >= n && now < l.mu.directUntil {
		l.mu.direct -= n
		l.mu.used += n
		l.c.trace.admit(l.key, n, 0, AdmitCentral)
		return true
	}
	if ls := l.head.Load(); ls != nil && ls.usable(now) == 0 {
		l.publishLocked(now) // drop spent and expired leases
	}
	if l.heldLocked(now) < n {
		return false
	}
	// Fast-path spenders take only whole amounts from one stripe of the
	// head, concurrently, so the greedy pass below can fall short only by
	// what they took meanwhile; then it puts back what it took (no lease
	// can die while l.mu is held).
	type took struct {
		s  *stripe
		k  int64
		id uint64 // the lease s belongs to, for the trace
	}
	var buf [2 * maxStripes]took
	taken := buf[:0]
	got := int64(0)
spend:
	for _, ls := range l.mu.leases {
		if now >= ls.deadline {
			continue
		}
		off := rand.Uint64()
		for j := range uint64(len(ls.stripes)) {
			s := &ls.stripes[(off+j)&ls.mask]
			if k := s.takeUpTo(n - got); k > 0 {
				taken = append(taken, took{s, k, ls.id})
				if got += k; got == n {
					break spend
				}
			}
		}
	}
	if got < n {
		for _, t := range taken {
			t.s.tokens.Add(t.k)
		}
		return false
	}
	l.rebalanceLocked(now)
	l.armLocked(now)
	if tr := l.c.trace; tr != nil {
		// One report per lease, in the order spent.
		for i := 0; i < len(taken); {
			id, k := taken[i].id, int64(0)
			for ; i < len(taken) && taken[i].id == id; i++ {
				k += taken[i].k
			}
			tr.admit(l.key, k, id, AdmitLeased)
		}
	}
	return true
}

// rebalanceLocked spreads the head lease's tokens evenly over its stripes
// once one of them has run dry, so that the spenders mapped to it (a lone
// goroutine always is) go back to the fast path. Spenders on other stripes
// meanwhile find them empty and wait on l.mu.
func (l *Limiter) rebalanceLocked(now int64) {
	if len(l.mu.leases) == 0 {
		return
	}
	head := l.mu.leases[0]
	if head.mask == 0 || now >= head.deadline {
		return
	}
	dry := false
	for i := range head.stripes {
		dry = dry || head.stripes[i].tokens.Load() == 0
	}
	if !dry {
		return
	}
	var total int64
	for i := range head.stripes {
		total += head.stripes[i].takeUpTo(math.MaxInt64)
	}
	n := int64(len(head.stripes))
	for i := range head.stripes {
		share := total / n
		if int64(i) < total%n {
			share++
		}
		head.stripes[i].tokens.Add(share)
	}
}

// heldLocked returns the tokens usable at now.
func (l *Limiter) heldLocked(now int64) int64 {
	var n int64
	for _, ls := range l.mu.leases {
		n += ls.usable(now)
	}
	return n
}

// nextExpiryLocked returns the first deadline after now of a held lease with
// tokens, or never.
func (l *Limiter) nextExpiryLocked(now int64) int64 {
	for _, ls := range l.mu.leases {
		if ls.usable(now) > 0 {
			return ls.deadline
		}
	}
	return never
}

// publishLocked drops spent and expired leases, makes the first one left the
// head and sets its refresh triggers.
func (l *Limiter) publishLocked(now int64) {
	l.mu.leases = slices.DeleteFunc(l.mu.leases, func(ls *lease) bool {
		if ls.usable(now) > 0 {
			return false
		}
		l.mu.used += ls.granted - ls.left()
		return true
	})
	clear(l.mu.leases[len(l.mu.leases):cap(l.mu.leases)])
	if len(l.mu.leases) == 0 {
		l.head.Store(nil)
		return
	}
	l.head.Store(l.mu.leases[0])
	l.armLocked(now)
}

// armLocked sets the head lease's refresh triggers. The time trigger fires a
// lead time before the last held lease expires. The low-water trigger is
// spread over the head's stripes: with slack = held − low, each stripe fires
// once it has given ⌈slack/stripes⌉ more tokens, so the first stripe fires
// no later than held reaching low. A stripe that fires early (stripes drain
// unevenly) starts a refresh that finds nothing due and re-arms them with
// the smaller slack, so spurious refreshes stay few.
func (l *Limiter) armLocked(now int64) {
	if len(l.mu.leases) == 0 {
		return
	}
	head := l.mu.leases[0]
	low, lead := l.lowWaterLocked(l.rateLocked())
	head.refreshAt.Store(l.mu.leases[len(l.mu.leases)-1].deadline - lead)
	slack := l.heldLocked(now) - low
	per := (slack + int64(len(head.stripes)) - 1) / int64(len(head.stripes))
	for i := range head.stripes {
		s := &head.stripes[i]
		if slack < 0 {
			s.low.Store(math.MaxInt64) // due now: the next spender starts a refresh
		} else {
			s.low.Store(max(0, s.tokens.Load()-per))
		}
	}
}

// planLocked decides whether a refresh is due at now and, if so, sizes it:
// count is what blocked callers need now (at least 1), want what the recent
// rate of use will spend over the target period (capped by a lease's life),
// plus what callers need, minus what held leases will still provide.
func (l *Limiter) planLocked(now int64) (count, want int64, due bool) {
	l.sampleLocked(now)
	rate := l.rateLocked()
	low, lead := l.lowWaterLocked(rate)
	var held, minNeed, sumNeed int64
	effective := 0.0 // held tokens that will be spent before they expire
	last := int64(0)
	for _, ls := range l.mu.leases {
		u := ls.usable(now)
		held += u
		effective += min(float64(u), math.Ceil(rate*float64(ls.deadline-now)))
		if u > 0 {
			last = ls.deadline
		}
	}
	for _, n := range l.mu.needs {
		if minNeed == 0 || n < minNeed {
			minNeed = n
		}
		sumNeed += n
	}
	due = minNeed > 0 || held < low || now >= last-lead
	if !due {
		return 0, 0, false
	}
	count = max(1, minNeed)
	horizon := float64(min(int64(l.c.cfg.targetPeriod), l.mu.life))
	w := math.Ceil(rate*horizon) + float64(sumNeed) - effective
	want = count
	if w > float64(count) {
		want = int64(min(w, float64(max(count, l.maxGrant))))
	}
	return count, want, true
}

// lowWaterLocked returns the refresh mark for a demand of rate tokens per
// ns: refresh when the tokens held would last less than lead, a quarter of a
// grant's horizon or two round trips, whichever is longer.
func (l *Limiter) lowWaterLocked(rate float64) (low, lead int64) {
	horizon := min(int64(l.c.cfg.targetPeriod), l.mu.life)
	lead = min(max(horizon/4, int64(2*l.mu.rtt)), l.mu.life/2)
	return max(1, int64(math.Ceil(rate*float64(lead)))), lead
}

// sampleLocked folds the demand since the last sample into the rate
// estimate: an exponentially weighted average with a time constant of the
// target period, so it forgets a burst within a few periods.
func (l *Limiter) sampleLocked(now int64) {
	dt := now - l.mu.sampledAt
	if dt <= 0 {
		return
	}
	demand := l.mu.used + l.refusedTotal()
	for _, ls := range l.mu.leases {
		demand += ls.granted - ls.left()
	}
	inst := float64(demand-l.mu.lastDemand) / float64(dt)
	alpha := 1 - math.Exp(-float64(dt)/float64(l.c.cfg.targetPeriod))
	l.mu.rate = ewma(l.mu.rate, inst, alpha)
	l.mu.lastDemand, l.mu.sampledAt = demand, now
}

// rateLocked returns the demand estimate in tokens per ns, capped by the
// key's whole rate.
func (l *Limiter) rateLocked() float64 { return min(l.mu.rate, l.keyRate) }

// shutdown marks l closed and every lease dead, and returns the leases to
// give back. Blocked callers wake up to ErrClosed.
func (l *Limiter) shutdown(now int64) []release {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		return nil
	}
	l.mu.closed = true
	l.head.Store(nil)
	var rels []release
	for _, ls := range l.mu.leases {
		if unused := ls.kill(); ls.id != 0 && (unused > 0 || now < ls.deadline) {
			rels = append(rels, release{key: l.key, id: ls.id, unused: unused})
		}
	}
	l.mu.leases = nil
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
// ErrWouldExceedDeadline if ctx's deadline comes first.
func sleepUntil(ctx context.Context, now, at int64) error {
	d := time.Duration(at - now)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return fmt.Errorf("%w: admitted in %v at the earliest", ErrWouldExceedDeadline, d)
	}
	return sleep(ctx, d)
}

func ewma(old, sample, alpha float64) float64 { return old + alpha*(sample-old) }

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
