package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Retry backoff: full jitter, a random wait in [0, min(maxBackoff,
// baseBackoff·2^attempt)].
const (
	baseBackoff = 10 * time.Millisecond
	maxBackoff  = time.Second
)

// endpoint is one node's address and the connection to it.
type endpoint struct {
	addr string
	cc   *grpc.ClientConn
	api  pb.LeaseholdClient
	// wakeMu guards woken: when wake last cut the connection's backoff
	// short, so that it does so at most once per maxBackoff (a time.Time
	// with its monotonic reading: a step of the wall clock neither stops
	// nor speeds the wakes).
	wakeMu sync.Mutex
	woken  time.Time
}

// wake makes gRPC connect to ep at once if its connection is waiting out
// a reconnect backoff (TRANSIENT_FAILURE), at most once per maxBackoff. It
// is called before each attempt the SDK sends to ep. gRPC spaces a failing
// connection's attempts 1s, 1.6s, 2.56s... apart, up to 2 minutes, and
// until the next one fails every call at once with the stale error: an
// endpoint that was down for a minute (a node restarted, a spare that is
// now a fresh replacement) stayed unreachable for up to a minute more
// after it came back, though it led. Woken only when the SDK tries it, a
// dead endpoint costs at most one connection attempt a second while the
// SDK keeps trying it (a Status round to find the leader tries every
// endpoint), and none while it does not. The reconnect is asynchronous:
// the attempt that woke it may still fail at once, the next one finds the
// connection up.
func (ep *endpoint) wake() {
	if ep.cc.GetState() != connectivity.TransientFailure {
		return
	}
	ep.wakeMu.Lock()
	if !ep.woken.IsZero() && time.Since(ep.woken) < maxBackoff {
		ep.wakeMu.Unlock()
		return
	}
	ep.woken = time.Now()
	ep.wakeMu.Unlock()
	ep.cc.ResetConnectBackoff()
}

// endpoints is the set of nodes a Client talks to and its belief about which
// one leads. It is safe for concurrent use.
type endpoints struct {
	list []*endpoint
	done chan struct{} // closed by shut: calls stop retrying
	// streams is the life of the endpoints' AcquireStreams (streamAPI),
	// canceled by close, which then waits for their receivers.
	streams   context.Context
	endStream context.CancelFunc
	receivers sync.WaitGroup
	mu        struct {
		sync.Mutex
		leader int            // index of the believed leader; -1 if unknown
		next   int            // where an attempt goes while no leader is known
		ids    map[string]int // node id -> index, learned from Status
	}
}

// dialEndpoints makes one gRPC connection per address with opts, which
// must carry transport credentials (grpc.NewClient refuses them otherwise).
// grpc.NewClient does not connect; the first call does.
func dialEndpoints(addrs []string, opts []grpc.DialOption) (*endpoints, error) {
	e := &endpoints{done: make(chan struct{})}
	e.streams, e.endStream = context.WithCancel(context.Background())
	e.mu.leader = -1
	e.mu.ids = make(map[string]int)
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, opts...)
		if err != nil {
			e.close()
			return nil, fmt.Errorf("endpoint %q: %w", a, err)
		}
		e.list = append(e.list, &endpoint{addr: a, cc: cc, api: newStreamAPI(e.streams, &e.receivers, pb.NewLeaseholdClient(cc))})
	}
	return e, nil
}

// shut makes every call in progress or to come stop retrying and return
// ErrClosed.
func (e *endpoints) shut() { close(e.done) }

func (e *endpoints) close() error {
	e.endStream()
	defer e.receivers.Wait()
	var errs []error
	for _, ep := range e.list {
		if err := ep.cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %q: %w", ep.addr, err))
		}
	}
	return errors.Join(errs...)
}

// pick returns the index of the endpoint the next write goes to.
func (e *endpoints) pick() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.leader >= 0 {
		return e.mu.leader
	}
	return e.mu.next
}

// succeeded records that a write succeeded at i, which therefore leads.
func (e *endpoints) succeeded(i int) {
	e.mu.Lock()
	e.mu.leader = i
	e.mu.Unlock()
}

// failed records that i did not serve a write: it is not believed to lead,
// and the next attempt goes to the endpoint after it.
func (e *endpoints) failed(i int) {
	e.mu.Lock()
	if e.mu.leader == i {
		e.mu.leader = -1
	}
	e.mu.next = (i + 1) % len(e.list)
	e.mu.Unlock()
}

// lookup returns the index of the endpoint whose node id is id.
func (e *endpoints) lookup(id string) (int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.mu.ids[id]
	return i, ok
}

// follow makes the endpoint of node id the believed leader, calling Status
// on every endpoint first if id is not known yet. It reports the leader's
// index, or false if no endpoint is node id.
func (e *endpoints) follow(ctx context.Context, id string, attemptTimeout time.Duration) (int, bool) {
	if id == "" {
		return 0, false
	}
	i, ok := e.lookup(id)
	if !ok {
		e.learn(ctx, attemptTimeout)
		if i, ok = e.lookup(id); !ok {
			return 0, false
		}
	}
	e.mu.Lock()
	e.mu.leader = i
	e.mu.Unlock()
	return i, true
}

// followAddr makes the endpoint dialed at addr, the leader's client
// address a follower named, the believed leader. It reports its index, or
// false if no endpoint has that address (behind a proxy, say): then the
// caller falls back to the leader's id.
func (e *endpoints) followAddr(addr string) (int, bool) {
	if addr == "" {
		return 0, false
	}
	for i, ep := range e.list {
		if ep.addr == addr {
			e.mu.Lock()
			e.mu.leader = i
			e.mu.Unlock()
			return i, true
		}
	}
	return 0, false
}

// learn calls Status on every endpoint at once, each bounded by
// attemptTimeout and ctx, and records their node ids and the leader they
// name. It returns how many endpoints answered. Its goroutines have ended
// when it returns.
func (e *endpoints) learn(ctx context.Context, attemptTimeout time.Duration) int {
	type answer struct {
		i    int
		resp *pb.StatusResponse
	}
	answers := make(chan answer, len(e.list))
	var wg sync.WaitGroup
	for i, ep := range e.list {
		wg.Go(func() {
			actx, cancel := context.WithTimeout(ctx, attemptTimeout)
			defer cancel()
			ep.wake()
			resp, err := ep.api.Status(actx, &pb.StatusRequest{})
			if err == nil {
				answers <- answer{i, resp}
			}
		})
	}
	wg.Wait()
	close(answers)
	e.mu.Lock()
	defer e.mu.Unlock()
	n, leaderID := 0, ""
	for a := range answers {
		n++
		if id := a.resp.GetNodeId(); id != "" {
			for old, j := range e.mu.ids {
				if j == a.i && old != id {
					delete(e.mu.ids, old) // the address now serves another node
				}
			}
			e.mu.ids[id] = a.i
			if a.resp.GetNodeState() == pb.NodeState_NODE_STATE_LEADER {
				e.mu.leader = a.i
			}
		}
		if l := a.resp.GetLeaderId(); l != "" {
			leaderID = l
		}
	}
	if j, ok := e.mu.ids[leaderID]; ok && leaderID != "" {
		e.mu.leader = j
	}
	return n
}

// call runs op, a write, against the believed leader until it succeeds or
// fails for a reason a retry cannot fix, or ctx ends. It passes every error
// through transport.FromStatus:
//
//   - *NotLeaderError: the write goes at once to the endpoint dialed at the
//     leader's client address the follower named, or, if none is (or the
//     follower named none), to the endpoint whose node id is the named
//     leader (learned with Status); if none is, to the next endpoint after
//     a backoff.
//   - ErrUnknownOutcome (the node lost leadership or quorum, could not be
//     reached, or the attempt timed out): op runs again, unchanged, on the
//     next endpoint after a backoff. op must therefore send the same request
//     (the same client_id and seq) every time, so the cluster's dedup table
//     returns the first answer if the first attempt applied.
//   - ErrOverloaded (the node shed the request, nothing applied): op runs
//     again on the same endpoint after the node's hint plus up to half of it
//     at random, so that shed clients do not come back together; without a
//     hint, after a backoff.
//   - anything else (ErrInvalid, ErrNoLimit, ErrStale, ErrPermissionDenied,
//     ErrUnauthenticated, ErrFull, an internal error) is returned as it is.
//
// Each attempt is bounded by attemptTimeout. When ctx ends, the error
// matches ctx's error and the last attempt's error.
func (e *endpoints) call(ctx context.Context, attemptTimeout time.Duration, op func(context.Context, pb.LeaseholdClient) error) error {
	var last error
	redirects, backoffs := 0, 0
	for {
		i := e.pick()
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		e.list[i].wake()
		err := transport.FromStatus(op(actx, e.list[i].api))
		cancel()
		if err == nil {
			e.succeeded(i)
			return nil
		}
		unknown := errors.Is(err, transport.ErrUnknownOutcome)
		if unknown {
			// Whatever ends this call, an endpoint that did not answer in
			// time is not believed to lead: the next request starts
			// elsewhere. (A paused leader otherwise held every request
			// until it woke, though a new leader was elected at once.)
			e.failed(i)
		}
		if ctx.Err() != nil {
			return stopped(ctx, err)
		}
		if e.shutting() {
			return fmt.Errorf("%w; last attempt: %w", ErrClosed, err)
		}
		var nl *transport.NotLeaderError
		var ol *transport.OverloadedError
		switch {
		case errors.As(err, &nl):
			last = err
			j, ok := e.followAddr(nl.LeaderClientAddr)
			if !ok {
				j, ok = e.follow(ctx, nl.LeaderID, attemptTimeout)
			}
			if ok && j != i && redirects < len(e.list) {
				redirects++
				continue
			}
			e.failed(i)
		case unknown:
			last = err
		case errors.Is(err, transport.ErrOverloaded):
			last = err
			wait := jitter(backoffs)
			if errors.As(err, &ol) && ol.RetryAfter > 0 {
				wait = ol.RetryAfter + rand.N(ol.RetryAfter/2+1)
			}
			if err := e.sleep(ctx, wait); err != nil {
				if errors.Is(err, ErrClosed) {
					return fmt.Errorf("%w; last attempt: %w", ErrClosed, last)
				}
				return stopped(ctx, last)
			}
			backoffs++
			continue
		default:
			return err
		}
		if err := e.sleep(ctx, jitter(backoffs)); err != nil {
			if errors.Is(err, ErrClosed) {
				return fmt.Errorf("%w; last attempt: %w", ErrClosed, last)
			}
			return stopped(ctx, last)
		}
		backoffs++
		redirects = 0
	}
}

func (e *endpoints) shutting() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// sleep waits for d, until ctx ends (returning its error) or until shut
// (returning ErrClosed).
func (e *endpoints) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.done:
		return ErrClosed
	}
}

// stopped is the error of a call whose ctx ended; last is the error of its
// last attempt.
func stopped(ctx context.Context, last error) error {
	cause := context.Cause(ctx)
	if errors.Is(last, cause) {
		return last
	}
	return fmt.Errorf("%w; last attempt: %w", cause, last)
}

// lateStreak counts the grants answered too late to spend in a row (a
// Limiter's central decisions, a Budget's reservations) and says how long
// to wait before asking again: each such grant took the key's tokens and
// gave none, and on a key whose MaxLease is shorter than its answers take,
// asking again at once spent them as fast as the cluster answered.
type lateStreak struct{ n atomic.Int64 }

// record notes whether the grant just answered came too late.
func (s *lateStreak) record(late bool) {
	if late {
		s.n.Add(1)
	} else {
		s.n.Store(0)
	}
}

// backoff is the wait before asking again: full jitter from baseBackoff,
// doubling with each late grant in a row, at least a millisecond.
func (s *lateStreak) backoff() time.Duration {
	return max(jitter(int(min(max(s.n.Load()-1, 0), 16))), time.Millisecond)
}

// jitter returns a full-jitter backoff for the given attempt (0-based).
func jitter(attempt int) time.Duration { return fullJitter(baseBackoff, maxBackoff, attempt) }

// fullJitter returns a wait drawn evenly from [0, base·2^attempt], capped
// at most.
func fullJitter(base, most time.Duration, attempt int) time.Duration {
	d := most
	if attempt < 16 {
		d = min(most, base<<attempt)
	}
	return rand.N(d + 1)
}
