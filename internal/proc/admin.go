package proc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

const (
	// StatusTimeout bounds each Status call of WaitLeader and WaitHealthy.
	StatusTimeout = time.Second
	// CallTimeout bounds each call OnLeader makes.
	CallTimeout = 5 * time.Second
	// pollEvery is how often the waits poll, and how long OnLeader waits
	// after every node said no.
	pollEvery = 50 * time.Millisecond
)

var (
	// ErrNotRunning is a node's Status error when its process is not
	// running or is paused: it was not asked.
	ErrNotRunning = errors.New("not running")
	// ErrNoLeader is what Leader returns (wrapped) when no node says it
	// leads.
	ErrNoLeader = errors.New("no node is the leader")
)

// Admin calls a cluster's client API on each of its nodes, for the tools
// around it: wait for a leader, show every node's status, make a call on
// the leader. Dial makes one over addresses; Cluster.Admin makes one over a
// cluster's nodes, skipping those not running or paused. It is safe for
// concurrent use.
type Admin struct {
	targets []target
	conns   []*grpc.ClientConn // Dial's, closed by Close
	hint    *atomic.Int64      // index of the target that last answered OnLeader
	// crashed returns the exit of a node that is down because it exited
	// on its own, if any; nil if the Admin knows no processes.
	crashed func() (Exit, bool)
	// dial connects to a client address not among the targets, as Dial
	// connected to them; nil for an Admin from Cluster.Admin, which knows
	// every node.
	dial func(addr string) (*grpc.ClientConn, error)
}

// target is one node an Admin calls.
type target struct {
	name string // node id, or address
	addr string
	api  pb.LeaseholdClient
	down func() bool // nil: always asked
}

// Dial returns an Admin over the client API addresses addrs, connecting
// lazily; each node is named by its address. sec says how the connections
// are secured and must choose (ErrNoTransportSecurity otherwise: plain
// text is never a default); opts are more gRPC dial options, without
// transport credentials (sec's are added).
func Dial(addrs []string, sec Security, opts ...grpc.DialOption) (*Admin, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no endpoints")
	}
	creds, err := sec.DialOption()
	if err != nil {
		return nil, err
	}
	opts = append(slices.Clip(opts), creds)
	a := &Admin{hint: new(atomic.Int64)}
	a.dial = func(addr string) (*grpc.ClientConn, error) { return grpc.NewClient(addr, opts...) }
	for _, addr := range addrs {
		cc, err := grpc.NewClient(addr, opts...)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("endpoint %s: %w", addr, err)
		}
		a.conns = append(a.conns, cc)
		a.targets = append(a.targets, target{name: addr, addr: addr, api: pb.NewLeaseholdClient(cc)})
	}
	return a, nil
}

// Close closes the connections Dial made; an Admin from Cluster.Admin has
// none of its own.
func (a *Admin) Close() error {
	var errs []error
	for _, cc := range a.conns {
		errs = append(errs, cc.Close())
	}
	a.conns = nil
	return errors.Join(errs...)
}

// Endpoints returns the client API addresses, in order.
func (a *Admin) Endpoints() []string {
	out := make([]string, len(a.targets))
	for i, t := range a.targets {
		out[i] = t.addr
	}
	return out
}

// NodeStatus is one node's answer to Status.
type NodeStatus struct {
	Name string // node id (Cluster.Admin) or address (Dial)
	Addr string
	// Status is the answer; nil if Err is set.
	Status *pb.StatusResponse
	Err    error // ErrNotRunning if the node was not asked
}

// Leader reports whether the node said it leads.
func (s NodeStatus) Leader() bool {
	return s.Err == nil && s.Status.GetNodeState() == pb.NodeState_NODE_STATE_LEADER
}

// Status asks every node at once, each call bounded by perCall, and returns
// the answers in the Admin's order.
func (a *Admin) Status(ctx context.Context, perCall time.Duration) []NodeStatus {
	out := make([]NodeStatus, len(a.targets))
	var wg sync.WaitGroup
	for i, t := range a.targets {
		out[i] = NodeStatus{Name: t.name, Addr: t.addr}
		if t.down != nil && t.down() {
			out[i].Err = ErrNotRunning
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, perCall)
			defer cancel()
			out[i].Status, out[i].Err = t.api.Status(cctx, &pb.StatusRequest{})
			out[i].Err = transport.FromStatus(out[i].Err)
		})
	}
	wg.Wait()
	return out
}

// Leader returns the status of the node that says it leads in the highest
// term, or an error wrapping ErrNoLeader and what each node answered.
func (a *Admin) Leader(ctx context.Context, perCall time.Duration) (NodeStatus, error) {
	var best NodeStatus
	var errs []error
	var answers []string
	for _, st := range a.Status(ctx, perCall) {
		switch {
		case st.Err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", st.Name, st.Err))
		case st.Leader() && (best.Status == nil || st.Status.GetTerm() > best.Status.GetTerm()):
			best = st
		default:
			answers = append(answers, fmt.Sprintf("%s %s in term %d", st.Name, st.Status.GetNodeState(), st.Status.GetTerm()))
		}
	}
	if best.Status == nil {
		// Every node may have answered (an election in progress): then
		// there is no error to wrap, only their answers (a bench run
		// printed "no node is the leader: %!w(<nil>)").
		if len(answers) > 0 {
			errs = append(errs, errors.New("answered: "+strings.Join(answers, ", ")))
		}
		if len(errs) == 0 {
			return best, ErrNoLeader
		}
		return best, fmt.Errorf("%w: %w", ErrNoLeader, errors.Join(errs...))
	}
	return best, nil
}

// WaitLeader polls Leader until a node leads, ctx ends, or (for an Admin
// of a Cluster) a node is down because it exited on its own and was not
// started again, before or while it waits: then the error wraps an
// *ExitError.
func (a *Admin) WaitLeader(ctx context.Context) (NodeStatus, error) {
	var st NodeStatus
	var last error
	err := a.poll(ctx, func() bool {
		st, last = a.Leader(ctx, StatusTimeout)
		return last == nil
	})
	if err != nil {
		return NodeStatus{}, fmt.Errorf("waiting for a leader: %w (last: %v)", err, last)
	}
	return st, nil
}

// WaitHealthy polls until every node that is running answers Status and
// all name the same leader, ctx ends, or a node is down after exiting on
// its own (as for WaitLeader).
func (a *Admin) WaitHealthy(ctx context.Context) error {
	var last error
	err := a.poll(ctx, func() bool {
		leaders := map[string]bool{}
		for _, st := range a.Status(ctx, StatusTimeout) {
			switch {
			case errors.Is(st.Err, ErrNotRunning):
			case st.Err != nil:
				last = fmt.Errorf("%s: %w", st.Name, st.Err)
				return false
			case st.Status.GetLeaderId() == "":
				last = fmt.Errorf("%s knows no leader", st.Name)
				return false
			default:
				leaders[st.Status.GetLeaderId()] = true
			}
		}
		if len(leaders) != 1 {
			last = fmt.Errorf("the nodes name %d leaders", len(leaders))
			return false
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("waiting for the nodes to agree on a leader: %w (last: %v)", err, last)
	}
	return nil
}

// poll calls done every pollEvery until it returns true (nil), ctx ends
// (ctx's error), or a node is down after exiting on its own (*ExitError).
func (a *Admin) poll(ctx context.Context, done func() bool) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if a.crashed != nil {
			if e, ok := a.crashed(); ok {
				return &ExitError{Exit: e}
			}
		}
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// retryable reports whether err means "ask the leader" or "outcome
// unknown" (which includes a node that did not answer): the cases where
// the same request may be sent again, to another node.
func retryable(err error) bool {
	return errors.Is(err, transport.ErrNotLeader) || errors.Is(err, transport.ErrUnknownOutcome)
}

// OnLeader calls fn on the nodes in turn, starting with the one that last
// answered, until one succeeds (its result), one fails with an error other
// than NotLeader or an unknown outcome (that error, once no other call is
// out, as one may yet succeed), or ctx ends. Each call is bounded by
// CallTimeout, but a node that has not answered within hedgeAfter does not
// hold up the others: the next is asked too, and the slow call's answer
// still counts if it comes first. After every node said no, it waits a
// moment and goes round again, skipping a node whose call is still out:
// through an election, the call is made once a leader is up. fn's request
// must be safe to repeat, and to be in flight on two nodes at once, as
// every request of the API is when it carries the same (client_id, seq),
// and SetLimit, DeleteLimit, DeleteLimits and RemoveMember are by what
// they do (a second DeleteLimit answers found=false, a second DeleteLimits
// from the same key deletes the keys after the first's, a second
// RemoveMember an error that waits for the first's answer); fn may run
// concurrently with itself. No
// call is running when OnLeader returns. Errors are mapped with
// transport.FromStatus.
// A follower's NotLeader that names the leader's client address sends the
// call there next; an address that is none of the nodes (Dial was given
// one follower's) is called over a connection of its own.
func OnLeader[T any](ctx context.Context, a *Admin, fn func(context.Context, pb.LeaseholdClient) (T, error)) (T, error) {
	var zero T
	n := len(a.targets)
	if n == 0 {
		return zero, errors.New("no nodes")
	}
	c := newLeaderCall(ctx, a, fn)
	defer c.close()
	timer := time.NewTimer(0)
	defer timer.Stop()
	// final is the first final error a node answered. A call still out
	// (the leader's, slow, where a hedge reached a follower of an older
	// build) may yet succeed: it is returned once none is.
	var final error
	for {
		if final != nil && !c.anyInFlight() {
			return zero, final
		}
		i, ok := 0, false
		if final == nil {
			i, ok = c.next()
		}
		if ok {
			c.launch(i)
			timer.Reset(hedgeAfter)
		} else {
			timer.Reset(pollEvery) // every node asked: go round again after it
		}
		select {
		case ans := <-c.answers:
			if ans.err == nil {
				if ans.i < n {
					a.hint.Store(int64(ans.i))
				}
				return ans.v, nil
			}
			if err := c.record(ans); err != nil && final == nil {
				final = err
			}
		case <-timer.C:
			if !ok && final == nil {
				c.newRound()
			}
		case <-ctx.Done():
			if final != nil {
				return zero, final
			}
			return zero, c.failure()
		}
	}
}

// anyInFlight reports whether a call is still out.
func (c *leaderCall[T]) anyInFlight() bool {
	return slices.Contains(c.inFlight, true)
}

// hedgeAfter is how long OnLeader waits for a node's answer before it asks
// the next one as well. A leader answers in milliseconds; one stopped (kill
// -STOP, a long GC pause, a full disk) holds the connection open without
// answering, and a new leader is elected among the others in about a
// second (serve's heartbeat timeout is 500 ms).
const hedgeAfter = 500 * time.Millisecond

// answer is one call's outcome.
type answer[T any] struct {
	i   int // index into leaderCall.targets
	v   T
	err error // mapped with transport.FromStatus
	// ended: the call's context had ended when it returned; callers: its
	// deadline was the caller's, as less than CallTimeout was left.
	ended, callers bool
}

// leaderCall is the state of one OnLeader: the calls out, the nodes asked
// this round, and each node's last answer for the error.
type leaderCall[T any] struct {
	a      *Admin
	fn     func(context.Context, pb.LeaseholdClient) (T, error)
	caller context.Context
	ctx    context.Context // the caller's, cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// targets are a's, then leaders that followers named by an address
	// none of a's has, each called over a connection of its own (conns).
	targets []target
	conns   []*grpc.ClientConn
	answers chan answer[T]

	first     int    // where this round starts: a.hint when it began
	asked     []bool // this round
	inFlight  []bool
	front     int // a node a follower named as the leader, asked next; -1 for none
	redirects int // this round's, at most len(a.targets)

	// last is each node's last answer; reason the last that was not cut
	// short by the caller, which says more than "context deadline exceeded".
	last, reason []error
	cut          []bool // last was cut short by the caller
}

func newLeaderCall[T any](ctx context.Context, a *Admin, fn func(context.Context, pb.LeaseholdClient) (T, error)) *leaderCall[T] {
	n := len(a.targets)
	c := &leaderCall[T]{a: a, fn: fn, caller: ctx, targets: slices.Clone(a.targets), answers: make(chan answer[T]),
		first: int(a.hint.Load()) % n, asked: make([]bool, n), inFlight: make([]bool, n), front: -1,
		last: make([]error, n), reason: make([]error, n), cut: make([]bool, n)}
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c
}

// close ends the calls still out, waits for them, and closes the
// connections made for named leaders.
func (c *leaderCall[T]) close() {
	c.cancel()
	c.wg.Wait()
	for _, cc := range c.conns {
		cc.Close()
	}
}

// next returns the node to ask now: the leader a follower named, else the
// next of this round's order not asked yet. A node whose call is still out
// is not asked again; one not running is skipped, and said to be.
func (c *leaderCall[T]) next() (int, bool) {
	if i := c.front; i >= 0 {
		c.front = -1
		if !c.inFlight[i] {
			return i, true
		}
	}
	n := len(c.a.targets)
	for k := range n {
		i := (c.first + k) % n
		if c.asked[i] || c.inFlight[i] {
			continue
		}
		if t := c.targets[i]; t.down != nil && t.down() {
			c.asked[i] = true
			c.last[i], c.reason[i], c.cut[i] = ErrNotRunning, ErrNotRunning, false
			continue
		}
		return i, true
	}
	return 0, false
}

// newRound lets every node be asked again, starting with the last that
// answered.
func (c *leaderCall[T]) newRound() {
	clear(c.asked)
	c.first = int(c.a.hint.Load()) % len(c.a.targets)
	c.redirects = 0
}

// launch calls fn on node i, bounded by CallTimeout, and sends the answer
// on c.answers unless OnLeader has returned.
func (c *leaderCall[T]) launch(i int) {
	if i < len(c.asked) {
		c.asked[i] = true
	}
	c.inFlight[i] = true
	api := c.targets[i].api
	c.wg.Go(func() {
		cctx, cancel := context.WithTimeout(c.ctx, CallTimeout)
		defer cancel()
		// When less than CallTimeout is left, the call's deadline is the
		// caller's, and a timeout is the caller's too.
		callerDeadline, ok := c.caller.Deadline()
		callDeadline, _ := cctx.Deadline()
		v, err := c.fn(cctx, api)
		ans := answer[T]{i: i, v: v, err: transport.FromStatus(err), ended: cctx.Err() != nil,
			callers: ok && !callerDeadline.After(callDeadline)}
		select {
		case c.answers <- ans:
		case <-c.ctx.Done():
		}
	})
}

// record notes a failed answer, and returns it, wrapped with the node's
// name, if it is final: an error other than NotLeader or an unknown
// outcome. A NotLeader naming the leader's client address makes that node
// the next asked.
func (c *leaderCall[T]) record(ans answer[T]) error {
	i, err := ans.i, ans.err
	c.inFlight[i] = false
	name := c.targets[i].name
	if !retryable(err) {
		return fmt.Errorf("%s: %w", name, err)
	}
	// A node's own DEADLINE_EXCEEDED counts as a timeout too: the server's
	// copy of the deadline can fire a moment before ours.
	timedOut := ans.ended || errors.Is(err, context.DeadlineExceeded)
	switch {
	case timedOut && !ans.callers && c.caller.Err() == nil:
		// The call's own timeout: the node took CallTimeout without an
		// answer, which is the reason itself.
		err = fmt.Errorf("no answer within %v: %w", CallTimeout, err)
		c.last[i], c.reason[i], c.cut[i] = err, err, false
	case !timedOut:
		c.last[i], c.reason[i], c.cut[i] = err, err, false
	default:
		c.last[i], c.cut[i] = err, true
	}
	var nl *transport.NotLeaderError
	if errors.As(err, &nl) && nl.LeaderClientAddr != "" && c.redirects < len(c.a.targets) {
		c.redirects++
		return c.redirect(nl.LeaderClientAddr, name)
	}
	return nil
}

// redirect makes the node at addr, which follower named as the leader, the
// next asked; if it is none of the targets, it gets a connection of its
// own (only for an Admin from Dial: a Cluster's knows every node). The
// error is a connection that cannot be made: an address gRPC cannot parse,
// which no retry mends.
func (c *leaderCall[T]) redirect(addr, follower string) error {
	for j, t := range c.targets {
		if t.addr == addr {
			if t.down == nil || !t.down() {
				c.front = j
			}
			return nil
		}
	}
	// An address none of the targets has may still be one of them named
	// otherwise (localhost for 127.0.0.1): a slow leader may then get the
	// call twice, and the second attempt's final error (RemoveMember's "not
	// in the configuration") waits for the first's answer (OnLeader).
	if c.a.dial == nil {
		return nil
	}
	name := fmt.Sprintf("%s (the leader, as %s named it)", addr, follower)
	cc, err := c.a.dial(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	c.conns = append(c.conns, cc)
	c.targets = append(c.targets, target{name: name, addr: addr, api: pb.NewLeaseholdClient(cc)})
	c.last, c.reason, c.cut = append(c.last, nil), append(c.reason, nil), append(c.cut, false)
	c.inFlight = append(c.inFlight, false)
	c.front = len(c.targets) - 1
	return nil
}

// failure is OnLeader's error when the caller's context ended: each node's
// last answer, a call still out named as cut short, with its earlier
// reason.
func (c *leaderCall[T]) failure() error {
	var errs []error
	for i, t := range c.targets {
		last, cut := c.last[i], c.cut[i]
		if c.inFlight[i] {
			last, cut = c.caller.Err(), true
		}
		switch {
		case last == nil:
		case cut && c.reason[i] != nil:
			errs = append(errs, fmt.Errorf("%s: %w (before: %w)", t.name, last, c.reason[i]))
		default:
			errs = append(errs, fmt.Errorf("%s: %w", t.name, last))
		}
	}
	return fmt.Errorf("no node acted as the leader: %w", errors.Join(append(errs, c.caller.Err())...))
}
