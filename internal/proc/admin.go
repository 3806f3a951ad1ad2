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

// callAt calls fn once on the node at addr, which is not one of a's
// targets, over a connection made for the call, bounded by CallTimeout.
func callAt[T any](ctx context.Context, a *Admin, addr string, fn func(context.Context, pb.LeaseholdClient) (T, error)) (T, error) {
	var zero T
	cc, err := a.dial(addr)
	if err != nil {
		return zero, err
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	v, err := fn(cctx, pb.NewLeaseholdClient(cc))
	if err = transport.FromStatus(err); err != nil {
		return zero, err
	}
	return v, nil
}

// OnLeader calls fn on the nodes in turn, starting with the one that last
// answered, each call bounded by CallTimeout, until one succeeds (its
// result), one fails with an error other than NotLeader or an unknown
// outcome (that error), or ctx ends. After every node said no, it waits a
// moment and goes round again: through an election, the call is made once
// a leader is up. fn's request must be safe to repeat, as every request of
// the API is when it carries the same (client_id, seq). Errors are mapped
// with transport.FromStatus.
// A follower's NotLeader that names the leader's client address sends the
// call there next; an address that is none of the nodes (Dial was given
// one follower's) is called once over a connection of its own.
func OnLeader[T any](ctx context.Context, a *Admin, fn func(context.Context, pb.LeaseholdClient) (T, error)) (T, error) {
	var zero T
	n := len(a.targets)
	if n == 0 {
		return zero, errors.New("no nodes")
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	// earlier holds each node's last error from a call that ended before
	// its deadline: the reason, when the last round's calls were cut short
	// by ctx and say only "context deadline exceeded".
	earlier := make([]error, n)
	for {
		var errs []error
		first := int(a.hint.Load())
		redirects := 0
		for k := 0; k < n; k++ {
			i := (first + k) % n
			t := a.targets[i]
			if t.down != nil && t.down() {
				errs = append(errs, fmt.Errorf("%s: %w", t.name, ErrNotRunning))
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, CallTimeout)
			// When less than CallTimeout is left, the call's deadline is
			// the caller's, and a timeout is the caller's too.
			callerDeadline, ok := ctx.Deadline()
			callDeadline, _ := cctx.Deadline()
			callers := ok && !callerDeadline.After(callDeadline)
			v, err := fn(cctx, t.api)
			ended := cctx.Err() != nil
			cancel()
			if err = transport.FromStatus(err); err == nil {
				a.hint.Store(int64(i))
				return v, nil
			}
			if !retryable(err) {
				return zero, fmt.Errorf("%s: %w", t.name, err)
			}
			// A node's own DEADLINE_EXCEEDED counts as a timeout too: the
			// server's copy of the deadline can fire a moment before ours.
			timedOut := ended || errors.Is(err, context.DeadlineExceeded)
			switch {
			case timedOut && !callers && ctx.Err() == nil:
				// The call's own timeout: the node took CallTimeout
				// without an answer, which is the reason itself.
				err = fmt.Errorf("no answer within %v: %w", CallTimeout, err)
				fallthrough
			case !timedOut:
				earlier[i] = err
				errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
			case earlier[i] != nil:
				// Cut short by the caller: keep what the node said before.
				errs = append(errs, fmt.Errorf("%s: %w (before: %w)", t.name, err, earlier[i]))
			default:
				errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
			}
			// A follower names the leader's client address: go there next,
			// or, if it is not one of the targets (an operator gave one
			// follower's address), call it there once.
			var nl *transport.NotLeaderError
			if errors.As(err, &nl) && nl.LeaderClientAddr != "" && redirects < n {
				redirects++
				known := false
				for j, o := range a.targets {
					if o.addr == nl.LeaderClientAddr {
						known = true
						if j != i && (o.down == nil || !o.down()) {
							a.hint.Store(int64(j))
							first, k = j, -1 // the loop's k++ makes it 0: j next
						}
						break
					}
				}
				if !known && a.dial != nil {
					v, err := callAt(ctx, a, nl.LeaderClientAddr, fn)
					if err == nil {
						return v, nil
					}
					if !retryable(err) {
						return zero, fmt.Errorf("%s (the leader, as %s named it): %w", nl.LeaderClientAddr, t.name, err)
					}
					errs = append(errs, fmt.Errorf("%s (the leader, as %s named it): %w", nl.LeaderClientAddr, t.name, err))
				}
			}
			if ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("no node acted as the leader: %w", errors.Join(append(errs, ctx.Err())...))
		case <-tick.C:
		}
	}
}
