package cluster

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// sentNotices records the removal notices nodes send (GossipConfig.onSend).
type sentNotices struct {
	mu   sync.Mutex
	msgs []gossipMsg
}

func (s *sentNotices) option(c *Config) {
	c.Gossip.onSend = func(_ string, msg gossipMsg) {
		if msg.kind != msgRemoved {
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, msg)
		s.mu.Unlock()
	}
}

// to returns the notices sent so far naming id.
func (s *sentNotices) to(id string) []gossipMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []gossipMsg
	for _, m := range s.msgs {
		if m.ID == id {
			out = append(out, m)
		}
	}
	return out
}

// inConfig reports whether n's latest Raft configuration (committed or
// not) names id, and with which suffrage.
func inConfig(t testing.TB, n *Node, id string) (raft.ServerSuffrage, bool) {
	s, ok := suffrages(t, n)[id] // raft.Voter is the zero Suffrage: check presence
	return s, ok
}

// waitLeaderAmong waits until one of nodes leads, and returns it.
func waitLeaderAmong(t testing.TB, nodes []*Node) *Node {
	t.Helper()
	var l *Node
	waitFor(t, electionWait, "a leader on the majority's side", func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				l = n
				return true
			}
		}
		return false
	})
	return l
}

// TestRolledBackRemovalDoesNotStopTheNode: a leader cut off from the
// majority appends the removal of a voter it still reaches, which that
// voter receives, and loses leadership before the removal commits; the
// majority elects a leader without it, and the removal is rolled back.
// The voter named in it read raft's latest configuration, committed or
// not, and stopped for good (checkSelfRemoved; its guard compared with
// ConfigurationFuture.Index, always 0 in raft v1.7.3); the old leader's
// reconcile, which tells a member missing from that configuration it was
// removed, stopped it as well. It must keep running and rejoin.
func TestRolledBackRemovalDoesNotStopTheNode(t *testing.T) {
	var p partition
	var sent sentNotices
	g, nodes := bootstrapN(t, 5, p.option, sent.option)
	g.waitVoters(2*opWait, "n1", "n2", "n3", "n4", "n5")
	var (
		l, victim   *Node
		majority    []*Node
		majorityIDs []string
		ferr        chan error
	)
	// raft sends a server it removes the entries up to its removal only if
	// that follower's replication is idle when the removal is appended: a
	// send already under way (catching the follower up, or the commit
	// timeout's) sees the stop and ends without them (replicateTo's
	// CHECK_MORE in raft v1.7.3). That happened in one CI run, the victim
	// never learning of a removal that was never committed: legitimate,
	// but not this test's case. So the victim is caught up first, and an
	// attempt whose removal does not reach the victim is healed and run
	// again with the leader of the time.
	for attempt := 1; ; attempt++ {
		l = g.leader()
		victim, majority, majorityIDs = nil, nil, nil
		for _, n := range nodes {
			switch {
			case n == l:
			case victim == nil:
				victim = n
			default:
				majority, majorityIDs = append(majority, n), append(majorityIDs, n.ID())
			}
		}
		waitFor(t, opWait, "the victim to see itself in a committed configuration", victim.mem.wasVoter.Load)
		if err := l.raft.Barrier(opWait).Error(); err != nil {
			t.Fatalf("barrier: %v", err)
		}
		waitFor(t, opWait, "the victim to hold the leader's whole log", func() bool {
			return victim.raft.LastIndex() >= l.raft.LastIndex()
		})

		p.split([]string{l.ID(), victim.ID()}, majorityIDs)
		f := l.raft.RemoveServer(raft.ServerID(victim.ID()), 0, 0) // cannot commit: 1 of the 4 voters left
		ferr = make(chan error, 1)
		go func() { ferr <- f.Error() }()
		received := poll(5*time.Second, func() bool {
			select {
			case err := <-ferr:
				if err == nil {
					t.Fatal("the removal committed while its leader was cut off from the majority")
				}
				if errors.Is(err, raft.ErrNotLeader) {
					t.Fatalf("the leader had lost leadership before it could append the removal: %v", err)
				}
				ferr <- err // lost leadership after appending it: the victim may still have it
			default:
			}
			_, in := inConfig(t, victim, victim.ID())
			return !in || victim.Removed()
		})
		if received {
			break
		}
		if attempt == 3 {
			t.Fatalf("in %d attempts the victim never received the removal", attempt)
		}
		t.Logf("attempt %d: raft did not send the victim its removal; healing and trying again", attempt)
		p.heal()
		<-ferr
		g.waitVoters(2*opWait, "n1", "n2", "n3", "n4", "n5")
	}
	if victim.Removed() {
		t.Fatal("the node named in an uncommitted removal stopped before it received it")
	}
	// What the victim and the old leader decide while the removal is not
	// committed: the victim's own check, and the leader's reconcile, whose
	// notices are handed to the victim at once.
	victim.mem.checkSelfRemoved()
	l.mem.reconcile()
	for _, msg := range sent.to(victim.ID()) {
		victim.mem.handle(msg)
	}
	if victim.Removed() {
		t.Fatal("the node named in an uncommitted removal stopped")
	}

	waitLeaderAmong(t, majority)
	p.heal()
	if err := <-ferr; err == nil {
		t.Fatal("the removal committed; the test meant it to be rolled back")
	}
	waitFor(t, 2*opWait, "the victim back in the configuration of the leader and its own, following the leader", func() bool {
		nl := g.leader()
		if _, in := inConfig(t, nl, victim.ID()); !in {
			return false
		}
		if _, in := inConfig(t, victim, victim.ID()); !in {
			return false
		}
		id, _ := victim.Leader()
		return id == nl.ID() && victim.raft.AppliedIndex() >= nl.raft.CommitIndex()
	})
	if victim.Removed() {
		t.Fatal("the node named in a rolled-back removal stopped")
	}
	if n := len(sent.to(victim.ID())); n > 0 {
		t.Errorf("%d removal notices were sent to a node that was never removed", n)
	}
}

// TestUncommittedAddDoesNotOpenTheVoteGate: a fresh node's vote gate
// opened on the leader's add of it as a non-voter as soon as the entry
// reached it, committed or not. A leader cut off from the majority adds
// it; the add cannot commit and is rolled back, and the gate must stay
// shut until a committed configuration names the node.
func TestUncommittedAddDoesNotOpenTheVoteGate(t *testing.T) {
	var p partition
	g, nodes := bootstrapN(t, 3, p.option)
	g.waitVoters(opWait, "n1", "n2", "n3")
	cfg, ln := g.config("n4", 0, p.option)
	addr := ln.Addr().String()
	// No leader adds n4 on its own until the test lets it: each node takes
	// the add as a claim that failed its proof lately (prove skips it).
	hold := func(on bool) {
		for _, n := range nodes {
			n.mem.mu.Lock()
			if on {
				n.mem.mu.unproven[claim{kind: claimAdd, id: "n4", addr: addr}] = time.Now().Add(time.Hour)
			} else {
				clear(n.mem.mu.unproven)
			}
			n.mem.mu.Unlock()
		}
	}
	hold(true)
	n4, err := g.open(cfg, ln)
	if err != nil {
		t.Fatal(err)
	}
	l := g.leader()
	var majority []*Node
	var majorityIDs []string
	for _, n := range nodes {
		if n != l {
			majority, majorityIDs = append(majority, n), append(majorityIDs, n.ID())
		}
	}
	p.split([]string{l.ID(), "n4"}, majorityIDs)
	f := l.raft.AddNonvoter("n4", raft.ServerAddress(addr), 0, 0) // cannot commit: 1 of 3 voters
	ferr := make(chan error, 1)
	go func() { ferr <- f.Error() }()
	waitFor(t, opWait, "n4 to receive its addition", func() bool {
		select {
		case err := <-ferr:
			if err == nil {
				t.Fatal("the addition committed while its leader was cut off from the majority")
			}
			if errors.Is(err, raft.ErrNotLeader) {
				t.Fatalf("the leader had lost leadership before it could append the addition: %v", err)
			}
			ferr <- err // lost leadership after appending it: n4 may still have it
		default:
		}
		s, in := inConfig(t, n4, "n4")
		return in && s == raft.Nonvoter
	})
	n4.mem.checkSelfRemoved()
	if n4.mem.gate.open.Load() {
		t.Fatal("the vote gate opened on an uncommitted addition")
	}

	waitLeaderAmong(t, majority)
	p.heal()
	if err := <-ferr; err == nil {
		t.Fatal("the addition committed; the test meant it to be rolled back")
	}
	hold(false)
	waitFor(t, 2*opWait, "n4 added for real, its vote gate open", n4.mem.gate.open.Load)
	if n4.Removed() {
		t.Fatal("n4 stopped")
	}
}

// TestOperatorRemovalOfAFreshNodeSticks: an operator removes a fresh node
// the leader has just added, before its vote gate opens (held shut here).
// The node ignored the removal notice (a fresh node refused every notice
// until its gate opened), still gossiped fresh, and the leader's reconcile
// added it again within a second. The removal must stick: the node is not
// added again, and it learns it was removed.
func TestOperatorRemovalOfAFreshNodeSticks(t *testing.T) {
	g, _ := bootstrapThree(t)
	g.waitVoters(opWait, "n1", "n2", "n3")
	cfg, ln := g.config("n4", 0)
	var hold atomic.Bool
	hold.Store(true)
	gc := *cfg.Gossip
	gc.holdGate = &hold
	cfg.Gossip = &gc
	n4, err := g.open(cfg, ln)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, opWait, "n4 added as a non-voter", func() bool {
		s, in := inConfig(t, g.leader(), "n4")
		return in && s == raft.Nonvoter
	})
	waitFor(t, opWait, "the removal of n4 by an operator", func() bool {
		_, err := g.leader().RemoveMember(context.Background(), &pb.RemoveMemberRequest{Id: "n4"})
		return err == nil
	})
	// Ten reconciles: the old code added it again in the first.
	holdsFor(t, 10*gc.ReconcileInterval, func() string {
		if s, in := inConfig(t, g.leader(), "n4"); in {
			return "the fresh node an operator removed was added again, as a " + s.String()
		}
		return ""
	})
	waitFor(t, opWait, "n4 to learn it was removed", n4.Removed)
	if ids := serverIDs(g.leader().raft.GetConfiguration().Configuration()); slices.Contains(ids, "n4") {
		t.Fatalf("n4 is in the configuration again: %v", ids)
	}
}
