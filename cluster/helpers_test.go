package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Bounds for waiting on a condition. Generous, for a loaded 2-core machine
// running the race detector; a healthy run takes a fraction of them.
const (
	electionWait = 20 * time.Second
	opWait       = 20 * time.Second
)

// testDeadline bounds one cluster test, its cleanups included. A test that
// hangs is stopped by watchdog well before go test's own timeout, which ends
// every package's run and prints the name of the stuck test above a dump
// of every goroutine, where a log cut to its tail does not show it.
const testDeadline = 5 * time.Minute

// watchdog exits the test binary if t is still running after testDeadline,
// printing every goroutine's stack and then, last, t's name.
func watchdog(t testing.TB) {
	timer := time.AfterFunc(testDeadline, func() {
		buf := make([]byte, 16<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "%s\n\nwatchdog: %s still running after %v; every goroutine's stack is above\n",
			buf, t.Name(), testDeadline)
		os.Exit(2)
	})
	t.Cleanup(func() { timer.Stop() }) // registered first, so it runs last
}

// testTimings are Raft timings short enough for quick elections on loopback,
// long enough not to flap on a busy machine.
func testTimings(c *Config) {
	c.HeartbeatTimeout = 200 * time.Millisecond
	c.ElectionTimeout = 200 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 10 * time.Millisecond
	c.ApplyTimeout = 5 * time.Second
}

// fakeClock is a Monotonic clock the test moves by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Duration      { return time.Duration(c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// testLogger returns a logger that writes warnings and errors to t's log
// until t's cleanups finish, and drops them after, when stray transport
// goroutines may still write.
func testLogger(t testing.TB) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() { // registered first, so it runs last
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(string(p))
	}
	return len(p), nil
}

// testCluster is n nodes on loopback, each in its own temp dir.
type testCluster struct {
	t     testing.TB
	cfgs  []Config
	nodes []*Node // nil while a node is down
}

// newTestCluster starts n nodes; opts adjust every node's config.
func newTestCluster(t testing.TB, n int, opts ...func(*Config)) *testCluster {
	t.Helper()
	watchdog(t)
	log := testLogger(t)
	c := &testCluster{t: t, cfgs: make([]Config, n), nodes: make([]*Node, n)}
	peers := make([]Peer, n)
	listeners := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		listeners[i] = ln
		peers[i] = Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: ln.Addr().String()}
	}
	for i := range n {
		cfg := DefaultConfig()
		cfg.ID = peers[i].ID
		cfg.Dir = filepath.Join(t.TempDir(), cfg.ID)
		cfg.RaftAddr = peers[i].RaftAddr
		cfg.Peers = peers
		cfg.Logger = log
		testTimings(&cfg)
		for _, o := range opts {
			o(&cfg)
		}
		c.cfgs[i] = cfg
	}
	t.Cleanup(c.closeAll)
	// Open every node at once, as processes started together would: an
	// empty node probes its peers before it bootstraps, and a peer answers
	// only once its own Open runs.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.open(i, listeners[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %s: %v", c.cfgs[i].ID, err)
		}
	}
	return c
}

// open opens node i on ln.
func (c *testCluster) open(i int, ln net.Listener) error {
	cfg := c.cfgs[i]
	cfg.Listener = ln
	n, err := Open(context.Background(), cfg)
	if err != nil {
		return err
	}
	c.nodes[i] = n
	return nil
}

// start opens node i, on ln or, if ln is nil, on its address again.
func (c *testCluster) start(i int, ln net.Listener) {
	c.t.Helper()
	if ln == nil {
		ln = c.relisten(c.cfgs[i].RaftAddr)
	}
	if err := c.open(i, ln); err != nil {
		c.t.Fatalf("open %s: %v", c.cfgs[i].ID, err)
	}
}

// relisten binds addr again after its node closed; the port is normally free
// at once (Go sets SO_REUSEADDR), but give a slow close a moment.
func (c *testCluster) relisten(addr string) net.Listener {
	c.t.Helper()
	var ln net.Listener
	var err error
	waitFor(c.t, 5*time.Second, "free port "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}

// stop closes node i: gracefully (leadership handed over) or, with kill, as
// abruptly as an in-process node can go: no leadership transfer.
func (c *testCluster) stop(i int, kill bool) {
	c.t.Helper()
	n := c.nodes[i]
	c.nodes[i] = nil
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if err := n.close(ctx, !kill); err != nil {
		c.t.Errorf("close %s: %v", n.ID(), err)
	}
}

func (c *testCluster) closeAll() {
	for i, n := range c.nodes {
		if n != nil {
			c.stop(i, false)
		}
	}
}

// index returns the index of n.
func (c *testCluster) index(n *Node) int {
	for i, m := range c.nodes {
		if m == n {
			return i
		}
	}
	c.t.Fatalf("node %s is not running", n.ID())
	return -1
}

// leader waits until one running node is the leader and ready to stamp, and
// returns it.
func (c *testCluster) leader() *Node {
	c.t.Helper()
	var found *Node
	waitFor(c.t, electionWait, "a ready leader", func() bool {
		for _, n := range c.nodes {
			if n != nil && n.readyToStamp() {
				found = n
				return true
			}
		}
		return false
	})
	return found
}

// followers returns the running nodes other than leader.
func (c *testCluster) followers(leader *Node) []*Node {
	var fs []*Node
	for _, n := range c.nodes {
		if n != nil && n != leader {
			fs = append(fs, n)
		}
	}
	return fs
}

func (n *Node) readyToStamp() bool {
	n.clock.Lock()
	defer n.clock.Unlock()
	return n.readyLocked()
}

// retryable reports whether an error asks for the request to be sent again
// (to the leader, with the same client id and seq).
func retryable(err error) bool {
	return errors.Is(err, transport.ErrNotLeader) || errors.Is(err, transport.ErrUnknownOutcome)
}

// call runs op on the current leader until it returns an answer that is not
// retryable, as a client would: leadership may move while the test runs.
func call[T any](c *testCluster, op func(ctx context.Context, n *Node) (T, error)) T {
	c.t.Helper()
	deadline := time.Now().Add(opWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opWait)
		resp, err := op(ctx, c.leader())
		cancel()
		if err == nil {
			return resp
		}
		if !retryable(err) || time.Now().After(deadline) {
			c.t.Fatalf("request failed: %v", err)
		}
	}
}

func (c *testCluster) acquire(req *pb.AcquireRequest) *pb.AcquireResponse {
	c.t.Helper()
	return call(c, func(ctx context.Context, n *Node) (*pb.AcquireResponse, error) { return n.Acquire(ctx, req) })
}

func (c *testCluster) release(req *pb.ReleaseRequest) *pb.ReleaseResponse {
	c.t.Helper()
	return call(c, func(ctx context.Context, n *Node) (*pb.ReleaseResponse, error) { return n.Release(ctx, req) })
}

func (c *testCluster) setLimit(key string, l *pb.Limit) {
	c.t.Helper()
	call(c, func(ctx context.Context, n *Node) (*pb.SetLimitResponse, error) {
		return n.SetLimit(ctx, &pb.SetLimitRequest{Key: key, Limit: l})
	})
}

// hourly is a token bucket of n tokens an hour, burst n: within a test it
// does not refill noticeably.
func hourly(n int64) *pb.Limit {
	return &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: n, PeriodNs: int64(time.Hour), MaxLeaseNs: int64(time.Minute)}
}

// take builds an acquire of count tokens of key.
func take(client string, seq uint64, key string, count int64, ttl time.Duration) *pb.AcquireRequest {
	return &pb.AcquireRequest{
		ClientId: []byte(client), Seq: seq,
		Items: []*pb.AcquireItem{{Key: key, Count: count}},
		TtlNs: int64(ttl),
	}
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(limit, cond) {
		t.Fatalf("no %s within %v", what, limit)
	}
}

// poll reports whether cond held within limit, checking it every 10ms.
func poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
