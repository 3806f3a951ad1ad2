package cluster

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestLeaderGrantsFollowerRedirects: three nodes elect a leader; the leader
// grants an acquire; a follower answers NotLeader naming the leader, for
// writes and GetLimit, and describes the cluster in Status.
func TestLeaderGrantsFollowerRedirects(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("k", hourly(100))
	resp := c.acquire(take("client", 1, "k", 1, 0))
	if !resp.GetAllowed() || resp.GetItems()[0].GetGranted() != 1 || resp.GetLogTimeNs() <= 0 {
		t.Fatalf("acquire on the leader = %v; want allowed, 1 granted, a log time", resp)
	}

	// Leadership may move on a busy machine; retry until a follower answers
	// while the leader stays put.
	waitFor(t, opWait, "a follower naming the leader", func() bool {
		leader := c.leader()
		for _, f := range c.followers(leader) {
			_, err := f.Acquire(context.Background(), take("client", 2, "k", 1, 0))
			var nl *transport.NotLeaderError
			if !errors.As(err, &nl) {
				if f.IsLeader() {
					return false // leadership moved to it meanwhile
				}
				t.Fatalf("acquire on follower %s: err = %v; want *transport.NotLeaderError", f.ID(), err)
			}
			if nl.LeaderID != leader.ID() || nl.LeaderRaftAddr != leader.RaftAddr() || !leader.IsLeader() {
				return false
			}
			_, err = f.GetLimit(context.Background(), &pb.GetLimitRequest{Key: "k"})
			if !errors.As(err, &nl) {
				if f.IsLeader() {
					return false
				}
				t.Fatalf("GetLimit on follower %s: err = %v; want *transport.NotLeaderError", f.ID(), err)
			}
		}
		return true
	})

	got := call(c, func(ctx context.Context, n *Node) (*pb.GetLimitResponse, error) {
		return n.GetLimit(ctx, &pb.GetLimitRequest{Key: "k"})
	})
	if !got.GetFound() || !got.GetPinned() || got.GetLimit().GetLimit() != 100 || got.GetLimit().GetBurst() != 100 {
		t.Errorf("GetLimit(k) = %v; want found, pinned, limit 100, burst 100", got)
	}
	missing := call(c, func(ctx context.Context, n *Node) (*pb.GetLimitResponse, error) {
		return n.GetLimit(ctx, &pb.GetLimitRequest{Key: "nope"})
	})
	if missing.GetFound() {
		t.Errorf("GetLimit(nope) = %v; want not found", missing)
	}

	leader := c.leader()
	for _, n := range c.nodes {
		st, err := n.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			t.Fatalf("status of %s: %v", n.ID(), err)
		}
		if st.GetNodeId() != n.ID() || st.GetRaftAddr() != n.RaftAddr() || len(st.GetServers()) != 3 {
			t.Errorf("status of %s = %v; want its id, address and 3 servers", n.ID(), st)
		}
		if n == leader && (st.GetNodeState() != pb.NodeState_NODE_STATE_LEADER || st.GetKeys() != 1 || st.GetSessions() != 1) {
			t.Errorf("status of leader %s = %v; want state leader, 1 key, 1 session", n.ID(), st)
		}
	}
}

// TestInvalidAndMissing: request errors come back as transport errors, not
// responses.
func TestInvalidAndMissing(t *testing.T) {
	c := newTestCluster(t, 1)
	ctx := context.Background()
	n := c.leader()

	_, err := n.Acquire(ctx, take("client", 1, "unknown", 1, 0))
	if !errors.Is(err, transport.ErrNoLimit) {
		t.Errorf("acquire of a key with no limit: err = %v; want ErrNoLimit", err)
	}
	var inv *transport.InvalidError
	_, err = n.Acquire(ctx, take("", 1, "k", 1, 0))
	if !errors.As(err, &inv) || inv.Field != "client_id" {
		t.Errorf("acquire without client id: err = %v; want *InvalidError on client_id", err)
	}
	// A rule that needs state is decided in Apply: a central acquire of a
	// concurrency key is rejected.
	conc := &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 2}
	req := take("client", 2, "conc", 1, 0)
	req.Items[0].Limit = conc
	_, err = n.Acquire(ctx, req)
	if !errors.As(err, &inv) || inv.Reason == "" {
		t.Errorf("central acquire of a concurrency key: err = %v; want *InvalidError with a reason", err)
	}
	if _, err := n.SetLimit(ctx, &pb.SetLimitRequest{Key: "k"}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("SetLimit without a limit: err = %v; want ErrInvalid", err)
	}
	rel, err := n.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("client"), Seq: 3, LeaseId: 12345})
	if err != nil || rel.GetReleased() {
		t.Errorf("release of an unknown lease = %v, %v; want released false", rel, err)
	}
	if _, err := n.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: "k"}); err != nil {
		t.Errorf("DeleteLimit of an unknown key: %v", err)
	}
}

// TestStampsAcrossLeaderChange: log time comes from the leader's monotonic
// clock, never goes backwards, and does not credit the time of an election.
func TestStampsAcrossLeaderChange(t *testing.T) {
	clock := &fakeClock{}
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.Monotonic = clock.now })
	c.setLimit("k", hourly(1000))

	t1 := c.acquire(take("client", 1, "k", 1, 0)).GetLogTimeNs()
	clock.advance(time.Second)
	t2 := c.acquire(take("client", 2, "k", 1, 0)).GetLogTimeNs()
	// Exactly one second, unless leadership moved in between; then less.
	if d := t2 - t1; d < 0 || d > int64(time.Second) {
		t.Fatalf("stamps %d then %d a clock second apart: diff %v; want in [0, 1s]", t1, t2, time.Duration(d))
	}

	// The election takes an hour by the nodes' clocks. The clock moves
	// before the leader dies, so no new leader can read it before the jump.
	old := c.leader()
	clock.advance(time.Hour)
	c.stop(c.index(old), true)
	t3 := c.acquire(take("client", 3, "k", 1, 0)).GetLogTimeNs()
	if c.leader() == old {
		t.Fatal("the killed node is still the leader")
	}
	if d := t3 - t2; d < 0 || d > int64(time.Minute) {
		t.Fatalf("first stamp of the new leader is %v after the old one's last; want in [0, 1m]: "+
			"the election's hour must not be credited", time.Duration(d))
	}

	// A clock that jumps back does not move log time back.
	clock.advance(-10 * time.Hour)
	t4 := c.acquire(take("client", 4, "k", 1, 0)).GetLogTimeNs()
	clock.advance(2 * time.Second)
	t5 := c.acquire(take("client", 5, "k", 1, 0)).GetLogTimeNs()
	if t4 < t3 || t5 < t4 {
		t.Fatalf("stamps after the clock jumped back: %d, %d, %d; want non-decreasing", t3, t4, t5)
	}
}

// TestLeaderKilledStateCarriesOver: when the leader dies without handing
// over, a new leader is elected, grants, and has the bucket state: a drained
// key is still drained.
func TestLeaderKilledStateCarriesOver(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("drain", hourly(10))
	if r := c.acquire(take("client", 1, "drain", 10, 0)); !r.GetAllowed() {
		t.Fatalf("draining acquire = %v; want allowed", r)
	}
	old := c.leader()
	c.stop(c.index(old), true)

	if r := c.acquire(take("client", 2, "drain", 1, 0)); r.GetAllowed() || r.GetRetryAfterNs() <= 0 {
		t.Errorf("acquire of the drained key on the new leader = %v; want denied with a retry-after", r)
	}
	req := take("client", 3, "fresh", 2, 0)
	req.Items[0].Limit = hourly(5)
	if r := c.acquire(req); !r.GetAllowed() {
		t.Errorf("acquire of a fresh key on the new leader = %v; want allowed", r)
	}
	if c.leader() == old {
		t.Fatal("the killed node is still the leader")
	}
}

// TestFullRestart: every node is closed and reopened on the same dirs; the
// cluster resumes with its state (invariant 6): a drained bucket is still
// drained and an acknowledged lease is still held, so releasing it refunds.
// The nodes snapshot before closing, so the restart restores a snapshot and
// replays the log after it.
func TestFullRestart(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("drain", hourly(10))
	c.setLimit("leased", hourly(4))
	if r := c.acquire(take("client", 1, "drain", 10, 0)); !r.GetAllowed() {
		t.Fatalf("draining acquire = %v; want allowed", r)
	}
	lease := c.acquire(take("client", 2, "leased", 4, time.Minute))
	if !lease.GetAllowed() || lease.GetLeaseId() == 0 || lease.GetTtlNs() != int64(time.Minute) {
		t.Fatalf("lease acquire = %v; want allowed, a lease id, a 1m TTL", lease)
	}
	for _, n := range c.nodes {
		// Every node must have applied the lease before its snapshot.
		waitFor(t, opWait, n.ID()+" applying the lease", func() bool {
			var leases int64
			st, err := n.Status(context.Background(), &pb.StatusRequest{})
			if err == nil {
				leases = st.GetLeases()
			}
			return leases == 1
		})
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot %s: %v", n.ID(), err)
		}
	}
	c.setLimit("after-snapshot", hourly(3)) // replayed from the log on restart

	for i := range c.nodes {
		c.stop(i, false)
	}
	for i := range c.nodes {
		c.start(i, nil)
	}

	if r := c.acquire(take("client", 3, "drain", 1, 0)); r.GetAllowed() {
		t.Errorf("acquire of the drained key after restart = %v; want denied", r)
	}
	if r := c.acquire(take("client", 4, "leased", 1, 0)); r.GetAllowed() {
		t.Errorf("acquire of the leased key after restart = %v; want denied (the lease holds it)", r)
	}
	rel := c.release(&pb.ReleaseRequest{ClientId: []byte("client"), Seq: 5, LeaseId: lease.GetLeaseId(), Unused: []int64{4}})
	if !rel.GetReleased() {
		t.Fatalf("release of the lease after restart = %v; want released", rel)
	}
	if r := c.acquire(take("client", 6, "leased", 4, 0)); !r.GetAllowed() {
		t.Errorf("acquire after the refund = %v; want allowed", r)
	}
	got := call(c, func(ctx context.Context, n *Node) (*pb.GetLimitResponse, error) {
		return n.GetLimit(ctx, &pb.GetLimitRequest{Key: "after-snapshot"})
	})
	if !got.GetFound() {
		t.Errorf("limit set after the snapshot is gone after restart")
	}
}

// TestRetryReturnsFirstResult: an acquire retried with the same client id
// and seq, as after a lost reply, returns the first grant and takes nothing
// more, on the same leader and on a new one.
func TestRetryReturnsFirstResult(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("k", hourly(10))
	req := take("client", 1, "k", 3, 10*time.Second)
	first := c.acquire(req)
	if !first.GetAllowed() || first.GetLeaseId() == 0 {
		t.Fatalf("first acquire = %v; want a lease", first)
	}
	same := func(label string, r *pb.AcquireResponse) {
		t.Helper()
		if r.GetLeaseId() != first.GetLeaseId() || r.GetLogTimeNs() != first.GetLogTimeNs() ||
			r.GetItems()[0].GetGranted() != 3 || r.GetItems()[0].GetRemaining() != first.GetItems()[0].GetRemaining() {
			t.Errorf("%s = %v; want the first result %v", label, r, first)
		}
	}
	same("retry", c.acquire(req))

	c.stop(c.index(c.leader()), true)
	same("retry on a new leader", c.acquire(req))

	// 3 of 10 are taken, once.
	if r := c.acquire(take("client", 2, "k", 7, 0)); !r.GetAllowed() {
		t.Errorf("acquire of the other 7 = %v; want allowed", r)
	}
	if r := c.acquire(take("client", 3, "k", 1, 0)); r.GetAllowed() {
		t.Errorf("acquire of an 11th token = %v; want denied", r)
	}
}

// TestCloseIsIdempotent: Close twice returns the first result; a closed node
// refuses requests as not the leader.
func TestCloseIsIdempotent(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.leader()
	c.nodes[0] = nil
	ctx := context.Background()
	if err := n.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatalf("second close: %v", err)
	}
	_, err := n.Acquire(ctx, take("client", 1, "k", 1, 0))
	if !errors.Is(err, transport.ErrNotLeader) {
		t.Errorf("acquire on a closed node: err = %v; want ErrNotLeader", err)
	}
	if _, err := n.WaitLeader(ctx); err == nil {
		t.Errorf("WaitLeader on a closed node: no error")
	}
}

// TestReopenRefusesADirInUse: a second node cannot open a data dir that a
// running node holds.
func TestReopenRefusesADirInUse(t *testing.T) {
	c := newTestCluster(t, 1)
	c.leader()
	cfg := c.cfgs[0]
	cfg.RaftAddr = ""
	var err error
	cfg.Listener, err = netListen()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Peers = []Peer{{ID: cfg.ID, RaftAddr: cfg.Listener.Addr().String()}}
	if n, err := Open(context.Background(), cfg); err == nil {
		n.Close(context.Background())
		t.Fatal("opened a data dir another node holds")
	}
}

// TestWaitLeader: every node of a cluster learns the leader.
func TestWaitLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), electionWait)
	defer cancel()
	for _, n := range c.nodes {
		id, err := n.WaitLeader(ctx)
		if err != nil || id == "" {
			t.Fatalf("WaitLeader on %s = %q, %v", n.ID(), id, err)
		}
	}
}

// TestCloseDoesNotWaitForAStalledPeer: a peer that accepts Raft connections
// and never answers (a paused process) must not hold Close for the RPC's I/O
// deadline: shutdown cuts the node's connections before waiting for Raft.
// Regression test for a shutdown that waited out transportTimeout (10 s) per
// stalled RPC.
func TestCloseDoesNotWaitForAStalledPeer(t *testing.T) {
	watchdog(t)
	hole, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	stalled := make(chan struct{}, 1)
	go func() {
		for {
			conn, err := hole.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			go func() {
				buf := make([]byte, 1024)
				if n, _ := conn.Read(buf); n > 0 { // a request arrived; never answer it
					select {
					case stalled <- struct{}{}:
					default:
					}
				}
				io.Copy(io.Discard, conn)
			}()
		}
	}()

	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.Dir, cfg.Listener, cfg.RaftAddr = "n1", t.TempDir(), ln, ln.Addr().String()
	cfg.Peers = []Peer{{ID: "n1", RaftAddr: ln.Addr().String()}, {ID: "n2", RaftAddr: hole.Addr().String()}}
	cfg.Logger = testLogger(t)
	testTimings(&cfg)
	n, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-stalled: // a vote request waits on the silent peer
	case <-time.After(electionWait):
		n.Close(context.Background())
		t.Fatal("the node sent the silent peer nothing")
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- n.Close(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("close: %v", err)
		}
		if d := time.Since(start); d >= transportTimeout/2 {
			t.Errorf("Close took %v; want well under the RPC deadline %v", d, transportTimeout)
		}
	case <-time.After(2 * transportTimeout):
		t.Fatal("Close did not return")
	}
}

// TestReplicationIsNotPipelined: the transport refuses raft's pipelined
// AppendEntries, so replication takes the synchronous path. The pipeline can
// deadlock a leader's replication to a follower that answered Success false,
// and with it Shutdown (transportMaxRPCsInFlight; DESIGN.md).
func TestReplicationIsNotPipelined(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.leader()
	_, err := n.trans.AppendEntriesPipeline(raft.ServerID(n.ID()), raft.ServerAddress(n.RaftAddr()))
	if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Errorf("AppendEntriesPipeline: err = %v; want raft.ErrPipelineReplicationNotSupported", err)
	}
}

// TestAcquireReportsWhereItWasStamped: an Acquire's answer says how long the
// leader held the request before it stamped the deciding entry and after,
// and the two fit in the round trip the caller saw (a sliding window's SDK
// spends its pieces within that bracket: issue 14), and that entry decided
// it. The answer to a retry is the remembered result, with its own log
// time: it says it was not decided by the entry it reports on, and reports
// no queue time (the remembered entry was stamped before the retry
// arrived); what it reports still fits the retry's round trip.
func TestAcquireReportsWhereItWasStamped(t *testing.T) {
	c := newTestCluster(t, 3)
	req := take("client", 1, "k", 1, time.Second)
	req.Items[0].Limit = hourly(100)
	for _, attempt := range []string{"first", "retry"} {
		var (
			resp    *pb.AcquireResponse
			elapsed time.Duration
		)
		call(c, func(ctx context.Context, n *Node) (*pb.AcquireResponse, error) {
			start := time.Now()
			r, err := n.Acquire(ctx, req)
			resp, elapsed = r, time.Since(start)
			return r, err
		})
		q, a := time.Duration(resp.GetQueuedNs()), time.Duration(resp.GetAnsweredNs())
		t.Logf("%s: round trip %v, queued %v, answered %v", attempt, elapsed, q, a)
		if !resp.GetAllowed() || q < 0 || a <= 0 || q+a > elapsed {
			t.Errorf("%s: allowed %v, queued %v, answered %v in a round trip of %v; want an answer the Raft commit took time in, both within the round trip",
				attempt, resp.GetAllowed(), q, a, elapsed)
		}
		if retry := attempt == "retry"; resp.GetDecided() == retry || (retry && q != 0) {
			t.Errorf("%s: decided %v, queued %v; want decided only on the first attempt, and no queue time for the remembered answer",
				attempt, resp.GetDecided(), q)
		}
	}
}

// TestHealthSaysWhetherTheNodeVotes: Health().Voter follows the node's own
// suffrage in the latest configuration it knows: true for every voter of
// a new cluster, false on a follower once the leader demotes it, while the
// others still vote.
func TestHealthSaysWhetherTheNodeVotes(t *testing.T) {
	c := newTestCluster(t, 3)
	l := c.leader()
	for _, n := range c.nodes {
		waitFor(t, opWait, n.ID()+" to know itself a voter", func() bool { return n.Health().Voter })
	}
	demoted := c.followers(l)[0]
	waitFor(t, opWait, "the leader to demote "+demoted.ID(), func() bool {
		return c.leader().raft.DemoteVoter(raft.ServerID(demoted.ID()), 0, opWait).Error() == nil
	})
	waitFor(t, opWait, demoted.ID()+" to know itself a non-voter", func() bool { return !demoted.Health().Voter })
	for _, n := range c.nodes {
		if n != demoted && !n.Health().Voter {
			t.Errorf("%s says it does not vote; only %s was demoted", n.ID(), demoted.ID())
		}
	}
}
