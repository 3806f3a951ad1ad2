package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// gossipCluster is in-process nodes with membership on, on loopback.
type gossipCluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes map[string]*Node
	cfgs  map[string]Config
	seeds []string
}

func newGossipCluster(t testing.TB) *gossipCluster {
	watchdog(t)
	g := &gossipCluster{t: t, nodes: map[string]*Node{}, cfgs: map[string]Config{}}
	t.Cleanup(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, n := range g.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), opWait)
			n.close(ctx, false)
			cancel()
		}
	})
	return g
}

// config returns a config for a new node id with its own free ports;
// expect > 0 makes it a bootstrap-expect node. The node's gossip address
// joins the seeds list the following nodes are given.
func (g *gossipCluster) config(id string, expect int, opts ...func(*Config)) (Config, net.Listener) {
	g.t.Helper()
	// Gossip binds TCP and UDP on one port, after the other nodes' configs
	// are made: below the ephemeral range no outgoing connection (the e2e
	// tests' beside this package's) can take it meanwhile. A FreePorts
	// port taken so made a node's Open fail at once and its peers wait for
	// it until their deadline ("waiting for 3 nodes to bootstrap").
	ports, err := loopback.StablePorts(1)
	if err != nil {
		g.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.Dir, cfg.Logger = id, filepath.Join(g.t.TempDir(), id), testLogger(g.t)
	// Membership tests watch leaders, health and failure tolerance over
	// seconds; testTimings' 200 ms timeouts let a loaded 2-core machine
	// hold elections of its own in the middle of them.
	relaxedTimings(&cfg)
	gossip := fmt.Sprintf("127.0.0.1:%d", ports[0])
	g.mu.Lock()
	g.seeds = append(g.seeds, gossip)
	// Nothing serves the client address; over TLS each node proves it by a
	// handshake (servedAddr), which is refused at once. A loopback address
	// of its own per node (all of 127/8 is loopback on Linux), so that a
	// NotLeader naming it names one node; a made-up host name
	// ("client-of-n1:1") sent every proof to the machine's DNS resolver.
	if len(g.seeds) > 254 {
		g.t.Fatalf("%d gossip nodes: no client address left in 127.0.2.0/24", len(g.seeds))
	}
	cfg.Gossip = &GossipConfig{BindAddr: gossip, Join: append([]string(nil), g.seeds...), BootstrapExpect: expect,
		ClientAddr: fmt.Sprintf("127.0.2.%d:1", len(g.seeds)), StabilizationTime: 500 * time.Millisecond, UpdateInterval: 200 * time.Millisecond,
		ReconcileInterval: 300 * time.Millisecond, JoinTimeout: 20 * time.Second, DeadServerTimeout: time.Hour}
	g.mu.Unlock()
	for _, o := range opts {
		o(&cfg)
	}
	return cfg, ln
}

// openWait bounds a gossip node's Open: a bootstrap-expect node waits in
// it until its peers have met (membership.prepareEmpty), for as long as
// its context lasts.
const openWait = 2 * opWait

func (g *gossipCluster) open(cfg Config, ln net.Listener) (*Node, error) {
	cfg.Listener = ln
	// Bounded: with context.Background() a bootstrap that never happens
	// (peers that do not all meet) waited for the 5-minute watchdog, whose
	// goroutine dump a log cut to its tail loses; now Open fails, naming
	// the nodes it had met. The one wait without a deadline found in
	// TestMembershipGauges, which hung once with its stacks lost: not
	// shown to be that hang's cause.
	ctx, cancel := context.WithTimeout(context.Background(), openWait)
	defer cancel()
	n, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.nodes[cfg.ID], g.cfgs[cfg.ID] = n, cfg
	g.mu.Unlock()
	return n, nil
}

// clientAddr returns the client address node id was configured to gossip.
func (g *gossipCluster) clientAddr(id string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cfgs[id].Gossip.ClientAddr
}

// start opens the nodes at once (a bootstrap-expect start) and returns them.
func (g *gossipCluster) start(cfgs []Config, lns []net.Listener) []*Node {
	g.t.Helper()
	out := make([]*Node, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Go(func() { out[i], errs[i] = g.open(cfgs[i], lns[i]) })
	}
	wg.Wait()
	// Every node's error: the first node's is often only that it waited
	// for a peer whose own Open failed at once.
	var failed []error
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Errorf("open %s: %w", cfgs[i].ID, err))
		}
	}
	if len(failed) > 0 {
		g.t.Fatal(errors.Join(failed...))
	}
	return out
}

func (g *gossipCluster) leader() *Node {
	g.t.Helper()
	var l *Node
	waitFor(g.t, electionWait, "a leader", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, n := range g.nodes {
			if !n.Removed() && n.IsLeader() {
				l = n
				return true
			}
		}
		return false
	})
	return l
}

func suffrages(t testing.TB, n *Node) map[string]raft.ServerSuffrage {
	t.Helper()
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil
	}
	out := map[string]raft.ServerSuffrage{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = s.Suffrage
	}
	return out
}

// waitVoters waits until the leader's configuration is exactly voters, all
// voters.
func (g *gossipCluster) waitVoters(limit time.Duration, voters ...string) {
	g.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		last := suffrages(g.t, g.leader())
		ok := len(last) == len(voters)
		for _, v := range voters {
			s, in := last[v] // raft.Voter is the zero Suffrage: check presence
			ok = ok && in && s == raft.Voter
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no voters %v within %v; last %v", voters, limit, last)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

// waitHealthy waits until the leader's autopilot finds every member
// healthy.
func (g *gossipCluster) waitHealthy() {
	g.t.Helper()
	waitFor(g.t, opWait, "every member healthy", func() bool {
		resp, err := g.leader().Members(context.Background(), &pb.MembersRequest{})
		return err == nil && resp.GetHealthy()
	})
}

// healthyThree bootstraps three nodes, waits until they are all healthy
// voters, and returns them with the leader and one follower.
func healthyThree(t *testing.T, opts ...func(*Config)) (g *gossipCluster, nodes []*Node, leader, follower *Node) {
	g, nodes = bootstrapThree(t, opts...)
	g.waitVoters(opWait, "n1", "n2", "n3")
	g.waitHealthy()
	leader = g.leader()
	for _, n := range nodes {
		if n != leader {
			follower = n
		}
	}
	return g, nodes, leader, follower
}

func bootstrapThree(t *testing.T, opts ...func(*Config)) (*gossipCluster, []*Node) {
	return bootstrapN(t, 3, opts...)
}

// bootstrapN starts n nodes n1…n<n> expecting a bootstrap of n, and waits
// for a leader.
func bootstrapN(t *testing.T, n int, opts ...func(*Config)) (*gossipCluster, []*Node) {
	g := newGossipCluster(t)
	var cfgs []Config
	var lns []net.Listener
	for i := 1; i <= n; i++ {
		c, ln := g.config(fmt.Sprintf("n%d", i), n, opts...)
		cfgs, lns = append(cfgs, c), append(lns, ln)
	}
	// Every node knows every seed.
	for i := range cfgs {
		cfgs[i].Gossip.Join = append([]string(nil), g.seeds...)
	}
	nodes := g.start(cfgs, lns)
	g.leader()
	return g, nodes
}

func TestBootstrapExpectJoinPromoteRemove(t *testing.T) {
	g, _ := bootstrapThree(t)
	g.waitVoters(opWait, "n1", "n2", "n3")

	cfg, ln := g.config("n4", 0)
	n4, err := g.open(cfg, ln)
	if err != nil {
		t.Fatal(err)
	}
	// Promotion takes gossip rounds (n4 must be seen, added, see itself
	// added and gossip that), a stabilization time and autopilot's update
	// interval, all wall-clock timers: it missed 20 s once under -race at a
	// load of ~15, so it has two opWaits. The claim is the promotion.
	g.waitVoters(2*opWait, "n1", "n2", "n3", "n4")

	// NotLeader names the leader's client address, from gossip. (Polled:
	// under load a follower can be between leaders for a moment.)
	var l *Node
	waitFor(t, opWait, "a follower's NotLeader naming the leader's client address", func() bool {
		l = g.leader()
		var follower *Node
		g.mu.Lock()
		for _, n := range g.nodes {
			if n != l {
				follower = n
			}
		}
		g.mu.Unlock()
		_, err := follower.SetLimit(context.Background(), &pb.SetLimitRequest{Key: "k", Limit: &pb.Limit{
			Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Second)}})
		var nl *transport.NotLeaderError
		if !errors.As(err, &nl) {
			t.Fatalf("follower's write: %v (want NotLeader)", err)
		}
		return nl.LeaderClientAddr == g.clientAddr(l.ID())
	})

	// Health (and so the failure tolerance) follows last contact, which a
	// loaded machine can let lapse for a moment: wait for it rather than
	// read it once (this failed under -race with a load average of 16).
	var resp *pb.MembersResponse
	waitFor(t, opWait, "four members, failure tolerance 1", func() bool {
		resp, err = l.Members(context.Background(), &pb.MembersRequest{})
		return err == nil && len(resp.GetMembers()) == 4 && resp.GetFailureTolerance() == 1
	})
	if err != nil {
		t.Fatal(err)
	}

	// Remove n4 while it runs: it learns it and stops taking part.
	if _, err := l.RemoveMember(context.Background(), &pb.RemoveMemberRequest{Id: "n4"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, opWait, "n4 removed", n4.Removed)
	g.waitVoters(opWait, "n1", "n2", "n3")
	st, err := n4.Status(context.Background(), &pb.StatusRequest{})
	if err != nil || st.GetNodeState() != pb.NodeState_NODE_STATE_REMOVED {
		t.Fatalf("n4 status %v, %v", st, err)
	}
	// Its health (/readyz, the console) says so: not ready, state removed.
	if h := n4.Health(); h.State != "removed" || h.Ready() == nil || !strings.Contains(h.Ready().Error(), "removed") {
		t.Errorf("n4 health %+v", h)
	}
	// A removed directory is refused.
	n4.Close(context.Background())
	g.mu.Lock()
	delete(g.nodes, "n4")
	g.mu.Unlock()
	cfg.Listener = nil
	cfg.RaftAddr = ln.Addr().String()
	if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrRemoved) {
		t.Fatalf("reopen removed node: %v, want ErrRemoved", err)
	}
}

// TestRemovingTheLeaderIsNotRefusedAfterItsHandover: removing the leader
// hands leadership over, and the remover asks the new leader again. The new
// leader's first verdicts can come from stats its followers gossiped under
// the old term, and autopilot finds a member whose term is not the
// leader's unhealthy: the removal was refused, "1 of the 2 voters left are
// healthy" (make chaos, seed 1, in CI: "leave leader:n2"). Which of its
// first rounds is that stale depends on the phase of the followers' stats
// ticks, so the test gives the new leader such a verdict itself, as
// autopilot computed it from a term-old gossip, and asks at once: the
// check (quorumLeft) asks the voters instead, and must not refuse.
func TestRemovingTheLeaderIsNotRefusedAfterItsHandover(t *testing.T) {
	_, nodes, old, _ := healthyThree(t)
	l := handOver(t, old, nodes)
	first := autopilotState(t, l)
	stale := *first
	stale.Servers = maps.Clone(first.Servers)
	for id, srv := range stale.Servers {
		if string(id) != l.ID() && string(id) != old.ID() {
			s := *srv
			s.Health.Healthy = false
			s.Stats.LastTerm = l.raft.CurrentTerm() - 1
			stale.Servers[id] = &s
		}
	}
	l.mem.NotifyState(&stale)

	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if _, err := l.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: old.ID()}); err != nil {
		t.Fatalf("removing the old leader %s on the new leader %s: %v", old.ID(), l.ID(), err)
	}
	waitFor(t, opWait, old.ID()+" removed", old.Removed)
}

// autopilotState waits for leader l's first autopilot state and returns
// it.
func autopilotState(t *testing.T, l *Node) *autopilot.State {
	t.Helper()
	var st *autopilot.State
	waitFor(t, opWait, l.ID()+"'s first autopilot state", func() bool {
		l.mem.mu.Lock()
		defer l.mem.mu.Unlock()
		st = l.mem.mu.state
		return st != nil
	})
	return st
}

// handOver asks leader old to remove itself, which it answers by handing
// leadership over (NotLeader), and returns the new leader, one of nodes.
func handOver(t *testing.T, old *Node, nodes []*Node) *Node {
	t.Helper()
	_, err := old.RemoveMember(context.Background(), &pb.RemoveMemberRequest{Id: old.ID()})
	var nl *transport.NotLeaderError
	if !errors.As(err, &nl) {
		t.Fatalf("removing the leader on itself: %v, want NotLeader after its handover", err)
	}
	var l *Node
	waitFor(t, electionWait, "a leader other than "+old.ID(), func() bool {
		for _, n := range nodes {
			if n != old && n.IsLeader() {
				l = n
				return true
			}
		}
		return false
	})
	return l
}

// TestNewLeaderStillRefusesARemovalThatLeavesNoHealthyQuorum: a voter
// stopped under the old leader passed as healthy on the new one
// (autopilot judged it against the old term, or gossip still had it alive
// before autopilot's first round), and the removal broke quorum.
func TestNewLeaderStillRefusesARemovalThatLeavesNoHealthyQuorum(t *testing.T) {
	_, nodes, old, down := healthyThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	down.close(ctx, false)
	l := handOver(t, old, slices.DeleteFunc(nodes, func(n *Node) bool { return n == down }))
	_, err := l.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: old.ID()})
	if !errors.Is(err, transport.ErrInvalid) || !strings.Contains(err.Error(), "1 of the 2 voters left are healthy") {
		t.Fatalf("removing %s with %s down: %v, want the quorum refusal", old.ID(), down.ID(), err)
	}
	if s := suffrages(t, l); s[old.ID()] != raft.Voter || len(s) != 3 {
		t.Fatalf("configuration after the refusal: %v", s)
	}
}

// TestRemovalRightAfterAVoterStopsIsRefused: a voter that stopped a
// moment ago is alive in gossip for seconds and autopilot, fed its last
// gossiped stats, finds it healthy; removing another voter then left a
// configuration with no quorum until it came back (a review found it:
// "leadership lost while committing log"). The leader now asks each voter
// left over Raft (quorumLeft), and the stopped one does not answer.
func TestRemovalRightAfterAVoterStopsIsRefused(t *testing.T) {
	_, nodes, l, down := healthyThree(t)
	var other *Node
	for _, n := range nodes {
		if n != l && n != down {
			other = n
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	down.close(ctx, false)
	_, err := l.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: other.ID()})
	if !errors.Is(err, transport.ErrInvalid) || !strings.Contains(err.Error(), "1 of the 2 voters left are healthy") {
		t.Fatalf("removing %s with %s just stopped: %v, want the quorum refusal", other.ID(), down.ID(), err)
	}
	if s := suffrages(t, l); s[other.ID()] != raft.Voter || len(s) != 3 {
		t.Fatalf("configuration after the refusal: %v", s)
	}
}

// followerCutOffOnRaft bootstraps three nodes whose Raft dials each other
// through a forwarder per directed pair (DialAddrs), waits until they are
// healthy voters, and then cuts the Raft links between the leader and one
// follower both ways, leaving gossip up. It returns the leader, the
// follower cut off and the other.
func followerCutOffOnRaft(t *testing.T) (leader, cut, other *Node) {
	leader, cut, others := followersCutOffOnRaft(t, 3)
	return leader, cut, others[0]
}

// followersCutOffOnRaft is followerCutOffOnRaft for n voters: others are
// the n-2 followers left connected.
func followersCutOffOnRaft(t *testing.T, n int) (leader, cut *Node, others []*Node) {
	g := newGossipCluster(t)
	var cfgs []Config
	var lns []net.Listener
	var ids []string
	for i := 1; i <= n; i++ {
		// With a voter cut off, the leader's lease rests on fewer
		// followers: a loaded machine kept it from one for 646 ms, past
		// relaxedTimings' 500 ms lease, and the leader stepped down in
		// the middle of a test. The longest lease raft allows.
		c, ln := g.config(fmt.Sprintf("n%d", i), n, func(c *Config) { c.LeaderLeaseTimeout = c.HeartbeatTimeout })
		cfgs, lns, ids = append(cfgs, c), append(lns, ln), append(ids, c.ID)
	}
	links := map[string]*forwarder{}
	for i := range cfgs {
		cfgs[i].Gossip.Join = append([]string(nil), g.seeds...)
		cfgs[i].DialAddrs = map[string]string{}
		for j := range cfgs {
			if i != j {
				f := newForwarder(t, lns[j].Addr().String())
				links[cfgs[i].ID+">"+cfgs[j].ID] = f
				cfgs[i].DialAddrs[cfgs[j].ID] = f.addr
			}
		}
	}
	nodes := g.start(cfgs, lns)
	g.waitVoters(opWait, ids...)
	g.waitHealthy()
	leader = g.leader()
	for _, n := range nodes {
		switch {
		case n == leader:
		case cut == nil:
			cut = n
		default:
			others = append(others, n)
		}
	}
	links[leader.ID()+">"+cut.ID()].cut.Store(true)
	links[cut.ID()+">"+leader.ID()].cut.Store(true)
	return leader, cut, others
}

// removing starts the removal of member id on l and returns once it holds
// the removal lock (it is checking); its error comes on the channel.
func removing(t *testing.T, l *Node, id string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	errc := make(chan error, 1)
	go func() {
		defer cancel()
		_, err := l.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: id})
		errc <- err
	}()
	waitFor(t, opWait, "the removal to hold the removal lock", func() bool {
		if l.mem.removeMu.TryLock() {
			l.mem.removeMu.Unlock()
			return false
		}
		return true
	})
	return errc
}

// TestElectionDuringARemovalsProbesAnswersNotLeader: leadership that moves
// while a removal asks the voters (quorumLeft) is answered NotLeader, which
// the CLI retries on the new leader, not with the quorum refusal, which it
// does not retry (a review found the refusal).
func TestElectionDuringARemovalsProbesAnswersNotLeader(t *testing.T) {
	// The probe of the follower cut off hangs until ProbeTimeout: time to
	// move leadership.
	l, _, next := followerCutOffOnRaft(t)
	errc := removing(t, l, next.ID())
	f := l.raft.LeadershipTransferToServer(raft.ServerID(next.ID()), raft.ServerAddress(next.RaftAddr()))
	if err := f.Error(); err != nil {
		t.Fatalf("hand leadership from %s to %s: %v", l.ID(), next.ID(), err)
	}
	err := <-errc
	var nl *transport.NotLeaderError
	if !errors.As(err, &nl) {
		t.Fatalf("removal on %s after leadership moved during its probes: %v, want NotLeader", l.ID(), err)
	}
}

// TestRemovalChecksTheConfigurationItChanges: a removal was checked
// against the configuration it read first (quorumLeft asks its voters, for
// up to ProbeTimeout when one does not answer) and made, with
// RemoveServer's prevIndex 0, to whatever configuration raft held by then.
// A voter that cannot answer, added during the check, made a removal that
// passed leave 2 healthy voters of 4: no quorum, and the removal itself
// never committed. The change is now made only to the configuration that
// was checked, and a changed one is checked again.
func TestRemovalChecksTheConfigurationItChanges(t *testing.T) {
	l, cut, others := followersCutOffOnRaft(t, 4)
	victim := others[0]
	// Checked alone, the voters left (the leader, the one cut off and the
	// other) hold a healthy quorum, 2 of 3.
	errc := removing(t, l, victim.ID())
	// The probe of the voter cut off hangs meanwhile. A voter at an
	// address nothing serves: its add commits on the four running.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := ln.Addr().String()
	ln.Close()
	if err := l.raft.AddVoter("z1", raft.ServerAddress(nobody), 0, opWait).Error(); err != nil {
		t.Fatalf("add a voter nothing runs during the removal's check: %v", err)
	}
	err = <-errc
	if !errors.Is(err, transport.ErrInvalid) || !strings.Contains(err.Error(), "2 of the 4 voters left are healthy") {
		t.Fatalf("removing %s while a voter was added during its check (%s cut off on Raft): %v, want the quorum refusal",
			victim.ID(), cut.ID(), err)
	}
	if s := suffrages(t, l); s[victim.ID()] != raft.Voter {
		t.Fatalf("configuration after the refusal: %v", s)
	}
}

// TestRemovalWithAVoterCutOffOnRaftIsRefused: a voter cut off from the
// leader on Raft while its gossip goes on (the Raft port partitioned, as
// the chaos run's proxy does) looked healthy for up to
// LastContactThreshold, its gossiped contact growing from 0, and raft's
// heartbeat to it fails only after the transport's timeout. A review
// removed another voter 1.4 s after the cut, and the configuration left
// had no quorum. The leader's own question over Raft (quorumLeft) gets no
// answer from it.
func TestRemovalWithAVoterCutOffOnRaftIsRefused(t *testing.T) {
	l, cut, other := followerCutOffOnRaft(t)
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	_, err := l.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: other.ID()})
	if !errors.Is(err, transport.ErrInvalid) || !strings.Contains(err.Error(), "1 of the 2 voters left are healthy") {
		t.Fatalf("removing %s with %s cut off from the leader on Raft: %v, want the quorum refusal", other.ID(), cut.ID(), err)
	}
	if s := suffrages(t, l); s[other.ID()] != raft.Voter || len(s) != 3 {
		t.Fatalf("configuration after the refusal: %v", s)
	}
}

// TestDeadVoterRemovedAfterTimeout: a voter that stops is removed by the
// leader once it has been dead DeadServerTimeout, not before; a regression
// test for autopilot never removing anyone because KnownServers gave the
// servers no voter type.
func TestDeadVoterRemovedAfterTimeout(t *testing.T) {
	const dead = 2 * time.Second
	g, nodes := bootstrapThree(t, func(c *Config) { c.Gossip.DeadServerTimeout = dead })
	g.waitVoters(opWait, "n1", "n2", "n3")
	l := g.leader()
	var victim *Node
	for _, n := range nodes {
		if n != l {
			victim = n
		}
	}
	killed := time.Now()
	victim.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, victim.ID())
	g.mu.Unlock()
	var rest []string
	for _, n := range nodes {
		if n != victim {
			rest = append(rest, n.ID())
		}
	}
	g.waitVoters(opWait, rest...)
	if took := time.Since(killed); took < dead {
		t.Fatalf("removed %v after it stopped, before the dead-server timeout %v", took, dead)
	}
}

// TestOtherClusterNotAdmitted: a node whose cluster name differs, or whose
// bootstrap-expect differs, is not admitted: its join fails, and the
// cluster's members never include it.
func TestOtherClusterNotAdmitted(t *testing.T) {
	g, _ := bootstrapThree(t)
	g.waitVoters(opWait, "n1", "n2", "n3")
	for _, tc := range []struct {
		name string
		opt  func(*Config)
	}{
		{"other cluster name", func(c *Config) { c.Gossip.ClusterName = "other" }},
		{"other bootstrap-expect", func(c *Config) { c.Gossip.BootstrapExpect = 5 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, ln := g.config("intruder", 0, tc.opt, func(c *Config) { c.Gossip.JoinTimeout = 2 * time.Second })
			if n, err := g.open(cfg, ln); err == nil {
				n.Close(context.Background())
				t.Fatal("a node of another cluster opened")
			}
			resp, err := g.leader().Members(context.Background(), &pb.MembersRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range resp.GetMembers() {
				if m.GetId() == "intruder" {
					t.Fatalf("the intruder is a member: %v", m)
				}
			}
		})
	}
}

// TestStaleNodeDoesNotDisrupt: a voter is stopped and removed; started
// again with its old data (a configuration that still names it), it
// campaigns, but the members reject it (it is not in their configuration),
// the leader keeps its term, and the stale node learns it was removed and
// stops taking part (hashicorp/raft#524).
func TestStaleNodeDoesNotDisrupt(t *testing.T) {
	g, _, l, stale := healthyThree(t)
	cfg := g.cfgs[stale.ID()]
	stale.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, stale.ID())
	g.mu.Unlock()
	if _, err := l.RemoveMember(context.Background(), &pb.RemoveMemberRequest{Id: stale.ID()}); err != nil {
		t.Fatal(err)
	}
	term := l.raft.CurrentTerm()

	cfg.Listener = nil
	cfg.RaftAddr = stale.RaftAddr()
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Two opWaits: it failed once at one, in a -count=5 race run beside
	// the e2e tests, with no refusal logged by the stale node (the notice
	// never reached it: cause not found; a failed send is now a Warn).
	waitFor(t, 2*opWait, "the stale node to learn it was removed", back.Removed)
	// Give it time it would have used to campaign: many election timeouts.
	// A stale node disrupts by campaigning, which raises its term above the
	// cluster's; the leader's own term is not the signal, since a loaded
	// machine can make a two-voter cluster elect again by itself
	// (TestStaleNodeDoesNotDisrupt failed that way under -race).
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if bt := back.raft.CurrentTerm(); bt > term {
			t.Fatalf("the stale node campaigned: its term is %d, the cluster's was %d", bt, term)
		}
		time.Sleep(20 * time.Millisecond) // watching for a change over a fixed time
	}
	if now := l.raft.CurrentTerm(); now != term {
		t.Logf("the cluster elected again by itself (term %d, was %d), not through the stale node", now, term)
	}
	if st, _ := back.Status(context.Background(), &pb.StatusRequest{}); st.GetNodeState() != pb.NodeState_NODE_STATE_REMOVED {
		t.Fatalf("stale node state %v", st.GetNodeState())
	}
}

// TestVoterThatLostItsStateRejoins: a voter whose data directory is wiped
// comes back under the same id, empty: it does not bootstrap again though
// its bootstrap peers are all there; the leader removes its old self and
// adds it again as a non-voter (remove-then-add: its vote gate opens only
// then, and it is promoted once caught up), and it ends a voter, not a
// removed node.
func TestVoterThatLostItsStateRejoins(t *testing.T) {
	t.Run("prompt", func(t *testing.T) { testVoterThatLostItsStateRejoins(t, false) })
	// Regression (CI, stop 19): autopilot promoted the re-added node
	// before the node had seen itself a non-voter, so its vote gate
	// stayed shut and the leader, seeing a Fresh voter, removed it again.
	// Here the node's gate is held shut after it has been added, for four
	// stabilization times: it must stay a non-voter all along, and be
	// promoted only once its gate is open.
	t.Run("slow to see itself added", func(t *testing.T) { testVoterThatLostItsStateRejoins(t, true) })
}

// serverIn returns member id's entry in n's Raft configuration, if it has
// one.
func serverIn(n *Node, id string) (raft.Server, bool) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return raft.Server{}, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return s, true
		}
	}
	return raft.Server{}, false
}

// followersOf returns the two nodes of a cluster of three that are not
// its leader l, in nodes' order.
func followersOf(nodes []*Node, l *Node) (first, second *Node) {
	for _, n := range nodes {
		switch {
		case n == l:
		case first == nil:
			first = n
		default:
			second = n
		}
	}
	return first, second
}

// wipeAFollower stops a follower among nodes, removes it from g and
// deletes its data, as a voter that lost its disk, and returns its config
// for the same Raft address, ready to open again empty.
func (g *gossipCluster) wipeAFollower(nodes []*Node) Config {
	g.t.Helper()
	_, lost := followersOf(nodes, g.leader())
	cfg := g.cfgs[lost.ID()]
	lost.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, lost.ID())
	g.mu.Unlock()
	if err := os.RemoveAll(cfg.Dir); err != nil {
		g.t.Fatal(err)
	}
	cfg.Listener, cfg.RaftAddr = nil, lost.RaftAddr()
	return cfg
}

// rejoined wipes a follower of a new three-node cluster and opens it
// again empty, its vote gate held shut while hold is set, and returns once
// the leader has re-added it as a non-voter.
func rejoined(t *testing.T, hold *atomic.Bool) (*gossipCluster, Config, *Node) {
	t.Helper()
	g, nodes := bootstrapThree(t)
	g.waitVoters(opWait, "n1", "n2", "n3")
	cfg := g.wipeAFollower(nodes)
	gc := *cfg.Gossip
	gc.holdGate = hold
	cfg.Gossip = &gc
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, opWait, "the node re-added as a non-voter", func() bool {
		return suffrages(t, g.leader())[back.ID()] == raft.Nonvoter
	})
	return g, cfg, back
}

func testVoterThatLostItsStateRejoins(t *testing.T, slow bool) {
	var hold atomic.Bool
	hold.Store(slow)
	g, cfg, back := rejoined(t, &hold)
	if slow {
		// Watch for a span of time, not a condition: nothing may promote
		// the node meanwhile.
		tick := time.NewTicker(20 * time.Millisecond)
		for end := time.Now().Add(4 * cfg.Gossip.StabilizationTime); time.Now().Before(end); <-tick.C {
			if s := suffrages(t, g.leader())[back.ID()]; s != raft.Nonvoter {
				t.Fatalf("the node is a %v while its vote gate is shut, want a non-voter", s)
			}
		}
		tick.Stop()
		hold.Store(false)
	}
	waitFor(t, opWait, "the node promoted again", func() bool {
		// raft.Voter is the zero Suffrage: a node missing from the
		// configuration must not read as one.
		if s, ok := suffrages(t, g.leader())[back.ID()]; !ok || s != raft.Voter {
			return false
		}
		if !back.mem.gate.open.Load() {
			t.Fatal("the node was promoted while its vote gate was shut")
		}
		return true
	})
	g.waitVoters(opWait, "n1", "n2", "n3")
	if back.Removed() {
		t.Fatal("the node that lost its state was told it was removed")
	}
}

// TestFreshNodeRestartedBeforeItsGateOpenedStaysGated: a fresh node's vote
// gate lived in memory only. A node that lost its state, came back empty
// and stopped again before its gate opened had Raft state by then (the
// leader had replicated to its old self), so it started as a node that
// resumes: ungated, gossiping no Fresh, a voter of its old self's with a
// log it had only partly caught up. It now starts behind the gate again,
// gossips Fresh, and the gate opens as for any fresh node.
func TestFreshNodeRestartedBeforeItsGateOpenedStaysGated(t *testing.T) {
	var hold atomic.Bool
	hold.Store(true)
	g, cfg, back := rejoined(t, &hold)
	var err error
	if !hasGateFile(cfg.Dir) {
		t.Fatalf("%s is missing while the vote gate is shut", gateFile)
	}
	back.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, back.ID())
	g.mu.Unlock()
	if back, err = g.open(cfg, nil); err != nil {
		t.Fatal(err)
	}
	if back.mem.gate == nil || back.mem.gate.open.Load() {
		t.Fatal("the node restarted before its vote gate opened starts with no gate shut")
	}
	hold.Store(false)
	waitFor(t, opWait, "the node promoted again", func() bool {
		s, ok := suffrages(t, g.leader())[back.ID()]
		return ok && s == raft.Voter && back.mem.gate.open.Load()
	})
	if hasGateFile(cfg.Dir) {
		t.Errorf("%s remains once the vote gate opened", gateFile)
	}
}

// fakeConsumer is a raft transport whose consumer channel the test feeds.
type fakeConsumer struct {
	*raft.InmemTransport
	ch chan raft.RPC
}

func (f fakeConsumer) Consumer() <-chan raft.RPC { return f.ch }

// TestFreshNodeGrantsNoVote: a fresh node's vote gate refuses votes,
// pre-votes and TimeoutNow, and fails the votes its own raft asks for,
// until it opens; it lets everything else through, and votes through once
// open.
func TestFreshNodeGrantsNoVote(t *testing.T) {
	_, inner := raft.NewInmemTransport("")
	fc := fakeConsumer{InmemTransport: inner, ch: make(chan raft.RPC)}
	g := newVoteGate(fc, errVoteGated)
	defer g.Close()
	send := func(cmd any) error {
		t.Helper()
		resp := make(chan raft.RPCResponse, 1)
		fc.ch <- raft.RPC{Command: cmd, RespChan: resp}
		select {
		case rpc := <-g.Consumer(): // passed through to raft
			rpc.Respond(nil, nil)
		case r := <-resp: // answered by the gate
			return r.Error
		case <-time.After(5 * time.Second):
			t.Fatal("no answer and nothing passed through")
		}
		return (<-resp).Error
	}
	if err := send(&raft.RequestVoteRequest{}); !errors.Is(err, errVoteGated) {
		t.Fatalf("vote while shut: %v, want errVoteGated", err)
	}
	if err := send(&raft.RequestPreVoteRequest{}); !errors.Is(err, errVoteGated) {
		t.Fatalf("pre-vote while shut: %v, want errVoteGated", err)
	}
	if err := send(&raft.TimeoutNowRequest{}); !errors.Is(err, errVoteGated) {
		t.Fatalf("TimeoutNow while shut: %v, want errVoteGated", err)
	}
	if err := send(&raft.AppendEntriesRequest{}); err != nil {
		t.Fatalf("append while shut: %v, want it passed through", err)
	}
	if err := g.RequestVote("n2", "n2", &raft.RequestVoteRequest{}, &raft.RequestVoteResponse{}); !errors.Is(err, errAsksNoVote) {
		t.Fatalf("own vote request while shut: %v, want errAsksNoVote", err)
	}
	if err := g.RequestPreVote("n2", "n2", &raft.RequestPreVoteRequest{}, &raft.RequestPreVoteResponse{}); !errors.Is(err, errAsksNoVote) {
		t.Fatalf("own pre-vote request while shut: %v, want errAsksNoVote", err)
	}
	g.open.Store(true)
	if err := send(&raft.RequestVoteRequest{}); err != nil {
		t.Fatalf("vote once open: %v, want it passed through", err)
	}
}

// TestEveryLeaderCallNamesTheLeaderClientAddr: with membership on, every
// call only the leader serves (the writes, issue 11's Charge, Extend and
// Restrict among them, the linearizable GetLimit and the membership calls)
// answers NotLeader on a follower naming the leader's client address from
// gossip, so a client goes there at once.
func TestEveryLeaderCallNamesTheLeaderClientAddr(t *testing.T) {
	g, nodes := bootstrapThree(t)
	l := g.leader()
	var f *Node
	for _, n := range nodes {
		if n != l {
			f = n
		}
	}
	want := g.clientAddr(l.ID())
	waitFor(t, opWait, "the follower to know the leader and its gossiped client address", func() bool {
		m, ok := f.Member(l.ID())
		id, _ := f.Leader()
		return ok && m.ClientAddr == want && id == l.ID()
	})
	ctx := context.Background()
	cid := []byte("c")
	limit := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Second)}
	calls := map[string]func() error{
		"Acquire": func() error {
			_, err := f.Acquire(ctx, &pb.AcquireRequest{ClientId: cid, Seq: 1, Items: []*pb.AcquireItem{{Key: "k", Count: 1, Limit: limit}}})
			return err
		},
		"Release": func() error {
			_, err := f.Release(ctx, &pb.ReleaseRequest{ClientId: cid, Seq: 2, LeaseId: 1})
			return err
		},
		"SetLimit": func() error {
			_, err := f.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: limit})
			return err
		},
		"GetLimit": func() error {
			_, err := f.GetLimit(ctx, &pb.GetLimitRequest{Key: "k"})
			return err
		},
		"DeleteLimit": func() error {
			_, err := f.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: "k"})
			return err
		},
		"Charge": func() error {
			_, err := f.Charge(ctx, &pb.ChargeRequest{ClientId: cid, Seq: 3, Items: []*pb.ChargeItem{{Key: "k", Tokens: 1}}})
			return err
		},
		"Extend": func() error {
			_, err := f.Extend(ctx, &pb.ExtendRequest{ClientId: cid, Seq: 4, LeaseId: 1, TtlNs: int64(time.Second)})
			return err
		},
		"Restrict": func() error {
			_, err := f.Restrict(ctx, &pb.RestrictRequest{ClientId: cid, Seq: 5,
				Items: []*pb.RestrictItem{{Key: "k", BlockedForNs: int64(time.Second)}}})
			return err
		},
		"Members": func() error {
			_, err := f.Members(ctx, &pb.MembersRequest{})
			return err
		},
		"RemoveMember": func() error {
			_, err := f.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: l.ID()})
			return err
		},
	}
	for name, call := range calls {
		// Polled: under load the follower can be between leaders for a
		// moment (TestBudgetRPCsOnAFollower failed so in CI).
		var err error
		waitFor(t, opWait, name+" on the follower naming the leader's client address", func() bool {
			var nl *transport.NotLeaderError
			err = call()
			if !errors.As(err, &nl) && !f.IsLeader() {
				t.Fatalf("%s on follower %s: %v; want NotLeader", name, f.ID(), err)
			}
			l := g.leader()
			return nl != nil && nl.LeaderID == l.ID() && nl.LeaderClientAddr == g.clientAddr(l.ID())
		})
	}
}

// relaxedTimings gives Raft timeouts five times testTimings', for tests
// whose assertions a load-induced election on a shared machine would spoil.
func relaxedTimings(c *Config) {
	c.HeartbeatTimeout = time.Second
	c.ElectionTimeout = time.Second
	c.LeaderLeaseTimeout = 500 * time.Millisecond
}
