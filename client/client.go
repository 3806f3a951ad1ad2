package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Errors of this package. Errors from the cluster keep their transport
// errors: match *transport.InvalidError, transport.ErrNoLimit,
// transport.ErrFull and transport.ErrUnknownOutcome with errors.As and
// errors.Is.
var (
	// ErrClosed: the Client was closed, or the Limiter or Budget called
	// was (its Close, or forgotten after WithIdleTimeout). After the
	// Client's Close, calls return ErrClosed itself; a Limiter or Budget
	// closed while the Client is open returns an error that names it and
	// why, and matches ErrClosed with errors.Is.
	ErrClosed = errors.New("leasehold: client closed")
	// ErrUnavailable: the cluster could not be reached, or refused the key
	// or client as full (the error then reads as, and matches,
	// transport.ErrFull), and no valid lease covered the request: none was
	// left and the failure policy did not admit it, or a Wait for more
	// than the leases still held gave up before they ended (the policy
	// decides once none is left).
	ErrUnavailable = errors.New("leasehold: cluster unreachable and no lease left")
	// ErrWouldExceedDeadline: Wait returned at once because the earliest
	// time the request could be admitted is after its context's deadline.
	ErrWouldExceedDeadline = errors.New("leasehold: wait would exceed the context deadline")
	// ErrExceedsLimit: the request asks for more tokens than the limit can
	// ever admit at once (more than its burst).
	ErrExceedsLimit = errors.New("leasehold: request exceeds what the limit can ever admit")
)

// closeParallelism is how many releases Close sends at once.
const closeParallelism = 16

// acquiring counts the Acquires in flight in this process, over every
// Client. While one is, an Allow refused on the strength of a remembered
// denial or pace yields the processor (runtime.Gosched) before it returns:
// callers that spin on a refused Allow would otherwise keep the goroutines
// that read and install the answer waiting behind their time slices (Go's
// scheduler runs a goroutine woken by the network after the runnable ones
// queued before it). Measured, 8 Clients × 64 spinning goroutines on one
// key, 2 cores: Acquire round trips p90 1.0s and 0.51 of B + r·Δ admitted;
// with the yield, p90 45ms and 0.92–0.98. The count is process-wide because
// the scheduler is. A refused Allow with nothing in flight pays nothing
// (BenchmarkAllowDenied: 30ns; a yield on every refusal made it 0.6–1.5µs).
var acquiring atomic.Int32

// A Client is a connection to a Leasehold cluster and the owner of every
// Limiter made from it, their leases and background refreshes. Make one per
// process with [Dial] and share it. It is safe for concurrent use.
type Client struct {
	cfg     config
	log     *slog.Logger
	id      []byte
	epoch   time.Time // the origin of the client's monotonic clock (see now)
	eps     *endpoints
	seqs    seqTracker
	stripes int    // most stripes per lease (see newLease)
	trace   *Trace // WithTrace; nil: tracing costs one nil check
	stats   stats  // read by Stats

	// base is the client's lifetime, not a request's: background refreshes
	// and Close's releases derive their contexts from it, and Close cancels
	// it once it stops waiting for them.
	base context.Context
	stop context.CancelFunc
	// closing is closed when Close begins: every wait of a caller's
	// goroutine (a Wait sleeping on a denial or a fallback share) watches
	// it and returns ErrClosed at once.
	closing chan struct{}

	wg sync.WaitGroup // background goroutines; Add only under mu while open
	// work hands a spawned function to an idle worker (spawn); idle
	// counts the workers waiting for one.
	work chan func()
	idle atomic.Int32
	mu   struct {
		sync.Mutex
		closed   bool
		limiters map[string]*Limiter
		budgets  map[string]*Budget
	}
	closeOnce sync.Once
	closeErr  error
}

// Dial returns a Client for the cluster whose nodes serve the Leasehold gRPC
// API at endpoints (host:port, or any gRPC target). It makes one connection
// per endpoint, and asks every endpoint which node it is and which node leads,
// waiting at most until ctx ends or the request timeout passes.
//
// Exactly one of WithTLS, WithTLSConfig and WithInsecure (or transport
// credentials through WithDialOptions) says how connections are protected;
// with none, Dial fails with an error matching ErrNoTransportSecurity, and
// never speaks plain text unasked.
//
// Dial fails only on bad arguments: an unreachable cluster is not an error
// here, as each Limiter follows its failure policy while the cluster is away.
// Close the Client when done.
func Dial(ctx context.Context, endpoints []string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	var errs []error
	if err := cfg.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(endpoints) == 0 {
		errs = append(errs, errors.New("no endpoints"))
	}
	for i, e := range endpoints {
		if e == "" {
			errs = append(errs, fmt.Errorf("endpoint %d is empty", i))
		} else if slices.Contains(endpoints[:i], e) {
			errs = append(errs, fmt.Errorf("endpoint %q is listed twice", e))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("leasehold: dial: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	id := cfg.clientID
	if id == nil {
		id = make([]byte, 16)
		rand.Read(id) // never fails (crypto/rand)
	}
	dopts, err := cfg.security.dialOptions(&cfg)
	if err != nil {
		return nil, fmt.Errorf("leasehold: dial: %w", err)
	}
	eps, err := dialEndpoints(endpoints, dopts)
	if err != nil {
		return nil, fmt.Errorf("leasehold: dial: %w", err)
	}
	if cfg.api != nil {
		for _, ep := range eps.list {
			ep.api = cfg.api(ep.addr)
		}
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.logger,
		id:      id,
		epoch:   time.Now(),
		eps:     eps,
		stripes: stripeCount(runtime.GOMAXPROCS(0)),
		trace:   cfg.trace,
	}
	c.base, c.stop = context.WithCancel(context.Background())
	c.closing = make(chan struct{})
	c.work = make(chan func())
	c.mu.limiters = make(map[string]*Limiter)
	c.mu.budgets = make(map[string]*Budget)

	lctx, cancel := context.WithTimeout(ctx, cfg.requestTimeout)
	n := eps.learn(lctx, cfg.requestTimeout)
	cancel()
	if n == 0 {
		c.log.Warn("leasehold: no endpoint answered; limiters follow their failure policy until one does",
			"endpoints", endpoints)
	}
	if cfg.idleTimeout > 0 {
		c.wg.Go(c.forgetIdle)
	}
	return c, nil
}

// Limiter returns the Limiter for key, making it with limit on first use.
// Every call with the same key returns the same Limiter, sharing its leases;
// if limit differs from the first one, the first one stays (the cluster too
// keeps the first definition of a key's limit) and a warning is logged.
//
// A key or limit the cluster would reject makes a Limiter that admits
// nothing: Allow returns false and Wait returns the *transport.InvalidError.
// After Close, Limiter returns a closed Limiter.
func (c *Client) Limiter(key string, limit Limit) *Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.mu.limiters[key]; ok {
		if l.limit != limit {
			c.log.Warn("leasehold: Limiter called again with another limit; keeping the first",
				"key", key, "first", l.limit, "ignored", limit)
		}
		return l
	}
	l := newLimiter(c, key, limit)
	if c.mu.closed {
		l.mu.closed, l.mu.closeErr = true, ErrClosed
		return l
	}
	c.mu.limiters[key] = l
	return l
}

// spawn runs f in a goroutine the Client owns and Close waits for: a
// worker left idle by an earlier f if one is waiting, else a new one. It
// returns false, without running f, once the Client is closing.
//
// Reusing workers is for the central sender and the refreshes, which go
// through gRPC: a new goroutine grows its stack by copying it on its first
// call, and on many keys every central decision starts one, since each
// Limiter has its own sender (DESIGN.md, "Background goroutines").
func (c *Client) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return false
	}
	select {
	case c.work <- f: // an idle worker took it
	default:
		c.wg.Go(func() { c.worker(f) })
	}
	return true
}

// maxIdleWorkers bounds the workers that wait for work after their
// function returned. Past it a worker ends: a burst of refreshes on
// thousands of keys does not leave thousands of goroutines behind.
const maxIdleWorkers = 64

// worker runs f, then waits for more work from spawn until the Client
// closes, unless maxIdleWorkers already wait.
func (c *Client) worker(f func()) {
	for {
		f()
		if c.idle.Add(1) > maxIdleWorkers {
			c.idle.Add(-1)
			return
		}
		select {
		case f = <-c.work:
			c.idle.Add(-1)
		case <-c.closing:
			c.idle.Add(-1)
			return
		}
	}
}

// Close releases the Client: it marks every lease dead, gives back their
// unused tokens (Release, best effort, at most the request timeout, waiting
// meanwhile for refreshes in flight, which give back what they get), then
// stops every goroutine it owns and closes the connections. Blocked Waits
// return ErrClosed; later calls on its Limiters do not admit. Close returns
// once all its goroutines have ended. Calls after the first return the first
// one's result.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Client) close() error {
	c.mu.Lock()
	c.mu.closed = true
	close(c.closing)
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
	var rels []release
	for _, l := range limiters {
		rels = append(rels, l.shutdown(now, ErrClosed)...)
	}
	for _, b := range budgets {
		for _, g := range b.shutdown(now, ErrClosed) {
			rels = append(rels, release{key: g.scope, id: g.id, items: g.unused})
		}
	}

	ctx, cancel := context.WithTimeout(c.base, c.cfg.requestTimeout)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, closeParallelism)
	failed := make(chan error, len(rels))
	for _, r := range rels {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			release := func() error { return c.release(ctx, r.id, r.unused) }
			if r.items != nil {
				release = func() error { return c.releaseItems(ctx, r.id, r.items) }
			}
			if err := release(); err != nil {
				failed <- fmt.Errorf("lease %d of %q: %w", r.id, r.key, err)
			}
		})
	}
	wg.Wait()
	close(failed)
	var errs []error
	for err := range failed {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		c.log.Warn("leasehold: close could not give back every unused token; they return when their leases expire",
			"failed", len(errs), "leases", len(rels), "err", errs[0])
	}

	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	c.stop()
	c.eps.shut()
	<-done
	return c.eps.close()
}

// release is a lease to give back.
type release struct {
	key    string
	id     uint64
	unused int64
	items  []int64 // a Budget's lease: unused per item (unused is ignored)
}

// sendTimes are when an Acquire's attempts were sent, on the client's
// clock (acquire retries an unknown outcome with the same seq).
type sendTimes struct {
	// first is when the first attempt was sent: a lease's life counts
	// from then, even if the reply that grants it answers a retry.
	first int64
	// since is when the attempt the cluster says it decided was sent
	// (AcquireResponse.decided): its log time was stamped after then.
	// It is first for a first attempt's answer, and for a retry's answer
	// remembered from an earlier entry or from a node that does not say.
	since int64
	// last is when the attempt that was answered was sent: recv − last is
	// a round trip. recv − first is not: after a leader change it holds
	// the failed attempts and the election between them (seconds), and
	// one such sample in the Limiter's round-trip average made its leases
	// renew about twice as often for many leases after
	// (TestRetriedAcquireIsNoRoundTripSample).
	last int64
}

// acquire sends one Acquire of count (up to want) tokens from key with a
// lease of ttl (0: a central decision), as sendAcquire does.
func (c *Client) acquire(ctx context.Context, key string, lim *pb.Limit, count, want int64, ttl time.Duration, p pacing) (resp *pb.AcquireResponse, at sendTimes, err error) {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.AcquireRequest{
		ClientId:     c.id,
		Seq:          seq,
		Items:        []*pb.AcquireItem{{Key: key, Count: count, Want: want, Limit: lim}},
		TtlNs:        int64(ttl),
		Paced:        p.paced,
		PacedAfterNs: p.after,
		SpanNs:       int64(p.span),
		SpanBuckets:  p.spanBuckets,
	}
	sent := false
	resp, at, err = c.sendAcquire(ctx, req, func(at int64) {
		sent = true
		if t := c.trace; t != nil && t.AcquireStart != nil {
			t.AcquireStart(AcquireStartInfo{ClientID: c.id, Seq: seq, Key: key, Count: count, Want: want, TTL: ttl,
				Sent: c.epoch.Add(time.Duration(at))})
		}
	})
	if t := c.trace; sent && t != nil && t.AcquireDone != nil {
		info := AcquireDoneInfo{ClientID: c.id, Seq: seq, Key: key, Err: err}
		if err == nil {
			info.Allowed = resp.GetAllowed()
			info.LeaseID = resp.GetLeaseId()
			if items := resp.GetItems(); len(items) == 1 {
				info.Granted = items[0].GetGranted()
			}
			info.TTL = time.Duration(resp.GetTtlNs())
			info.LogTime = time.Duration(resp.GetLogTimeNs())
			info.RetryAfter = time.Duration(resp.GetRetryAfterNs())
			info.Piece, info.Pieces = time.Duration(resp.GetPieceNs()), resp.GetPieces()
			info.Queued, info.Answered = time.Duration(resp.GetQueuedNs()), time.Duration(resp.GetAnsweredNs())
			info.Decided = resp.GetDecided()
		}
		t.AcquireDone(info)
	}
	return resp, at, err
}

// release gives back a lease's unused tokens; it retries like acquire.
func (c *Client) release(ctx context.Context, id uint64, unused int64) error {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.ReleaseRequest{ClientId: c.id, Seq: seq, LeaseId: id, Unused: []int64{unused}}
	t := c.trace
	if t != nil && t.ReleaseStart != nil {
		t.ReleaseStart(ReleaseStartInfo{ClientID: c.id, Seq: seq, LeaseID: id, Unused: unused})
	}
	var resp *pb.ReleaseResponse
	err := c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Release(ctx, req)
		resp = r
		return err
	})
	c.stats.request(callRelease, err)
	if t != nil && t.ReleaseDone != nil {
		info := ReleaseDoneInfo{ClientID: c.id, Seq: seq, LeaseID: id, Err: err}
		if err == nil {
			info.Released = resp.GetReleased()
			info.LogTime = time.Duration(resp.GetLogTimeNs())
		}
		t.ReleaseDone(info)
	}
	return err
}

// seqTracker hands out a Client's sequence numbers and knows which are in
// flight, so that every request can tell the cluster the lowest seq whose
// reply it may still need (acked_below). A request abandoned without a reply
// counts as acknowledged once it ends: it is never retried after that. It is
// safe for concurrent use.
type seqTracker struct {
	mu       sync.Mutex
	last     uint64
	inflight []uint64 // ascending
}

// begin returns a new seq, in flight until end.
func (t *seqTracker) begin() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last++
	t.inflight = append(t.inflight, t.last)
	return t.last
}

func (t *seqTracker) end(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := slices.BinarySearch(t.inflight, seq); ok {
		t.inflight = slices.Delete(t.inflight, i, i+1)
	}
}

// low returns the lowest seq in flight, or the next seq if none is.
func (t *seqTracker) low() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.inflight) == 0 {
		return t.last + 1
	}
	return t.inflight[0]
}

// rejected reports whether err says the cluster rejected the request
// itself, so that retrying it at once cannot help: it is invalid, names no
// limit, or this client's certificate may not make it. Such a key admits
// nothing (StateInvalid), whatever the failure policy: a refusal is not an
// outage. Those an operator can lift are asked again after the refusal
// backoff (refusalRetry).
func rejected(err error) bool {
	return errors.Is(err, transport.ErrInvalid) || errors.Is(err, transport.ErrNoLimit) ||
		errors.Is(err, transport.ErrPermissionDenied) || errors.Is(err, transport.ErrUnauthenticated)
}
