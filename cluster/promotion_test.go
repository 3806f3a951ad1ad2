package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestReaddedNodeWaitsStabilization: a voter that lost its state and came
// back empty under its id is removed and added again as a non-voter; it is
// promoted only after it has been healthy for the stabilization time, counted
// from when it could be healthy at all (its vote gate opened: until then it
// reports itself fresh, which is unhealthy), as a new node is.
func TestReaddedNodeWaitsStabilization(t *testing.T) {
	const stabilization = 3 * time.Second
	g, nodes := bootstrapThree(t, func(c *Config) { c.Gossip.StabilizationTime = stabilization })
	g.waitVoters(opWait, "n1", "n2", "n3")
	cfg := g.wipeAFollower(nodes)
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var added, opened, promoted time.Time
	deadline := time.Now().Add(opWait + 2*stabilization)
	for promoted.IsZero() {
		if time.Now().After(deadline) {
			t.Fatalf("not promoted again by the deadline (added %v, gate opened %v)", !added.IsZero(), !opened.IsZero())
		}
		s, ok := suffrages(t, g.leader())[back.ID()]
		now := time.Now()
		switch {
		case ok && s == raft.Nonvoter && added.IsZero():
			added = now
		case ok && s == raft.Voter && !added.IsZero():
			promoted = now
		}
		if opened.IsZero() && back.mem.gate.open.Load() {
			opened = now
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	t.Logf("re-added as a non-voter; gate opened %v after, promoted %v after (stabilization %v)",
		opened.Sub(added).Round(time.Millisecond), promoted.Sub(added).Round(time.Millisecond), stabilization)
	if d := promoted.Sub(opened); opened.IsZero() || d < stabilization {
		t.Errorf("promoted %v after its vote gate opened, want at least the stabilization time %v", d.Round(time.Millisecond), stabilization)
	}
}

// electNew hands leadership from the current leader to a voter that has not
// led yet (a leader's autopilot state outlives its leadership) and returns
// it, once it leads.
func (g *gossipCluster) electNew(led map[*Node]bool, nodes []*Node) *Node {
	g.t.Helper()
	old := g.leader()
	led[old] = true
	i := slices.IndexFunc(nodes, func(n *Node) bool { return !led[n] })
	if i < 0 {
		g.t.Fatal("every node has led")
	}
	next := nodes[i]
	if err := old.raft.LeadershipTransferToServer(raft.ServerID(next.ID()), raft.ServerAddress(next.RaftAddr())).Error(); err != nil {
		g.t.Fatalf("leadership transfer from %s to %s: %v", old.ID(), next.ID(), err)
	}
	waitFor(g.t, electionWait, next.ID()+" leading", next.IsLeader)
	led[next] = true
	return next
}

// TestNewTermIsGossipedAtOnce: after an election each follower gossips its
// stats as soon as the new leader's first entry reaches it, so the new
// leader hears the new term within a gossip round and finds it healthy
// within a round of autopilot, not one to two UpdateIntervals later.
// Before, a follower gossiped the term at its next stats tick, and the new
// leader reported every follower unhealthy (its term differed) until then:
// 1-2 s after each election with the default interval of 1 s.
func TestNewTermIsGossipedAtOnce(t *testing.T) {
	// Long, so that a follower's tick falling within the bound by chance
	// is rare: both followers' do with a chance of 1 in 25 per election.
	const interval = 5 * time.Second
	const bound = time.Second
	g, nodes := bootstrapThree(t, func(c *Config) { c.Gossip.UpdateInterval = interval })
	g.waitVoters(opWait, "n1", "n2", "n3")
	g.waitHealthy()
	led := map[*Node]bool{}
	for range 2 {
		l := g.electNew(led, nodes)
		start := time.Now()
		term := l.raft.CurrentTerm()
		waitFor(t, opWait, "both followers' new term in the new leader's gossip", func() bool {
			for _, f := range g.followers(l) {
				if mb, ok := l.mem.g.member(f.ID()); !ok || mb.meta.LastTerm != term {
					return false
				}
			}
			return true
		})
		heard := time.Since(start)
		healthy := g.lastUnhealthy(l, start, interval+bound)
		t.Logf("the new leader heard the new term %v after the election, and it last reported the cluster unhealthy %v after it",
			heard.Round(time.Millisecond), healthy.Round(time.Millisecond))
		if heard > bound {
			t.Errorf("the new leader heard its followers' new term %v after the election, want within %v", heard, bound)
		}
	}
}

// followers returns the running nodes other than l.
func (g *gossipCluster) followers(l *Node) []*Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*Node
	for _, n := range g.nodes {
		if n != l {
			out = append(out, n)
		}
	}
	return out
}

// lastUnhealthy watches l's Members from start until start+watch and
// returns when, after start, l last reported the cluster not healthy (or
// had no verdict); it fails the test unless the last report was healthy.
func (g *gossipCluster) lastUnhealthy(l *Node, start time.Time, watch time.Duration) time.Duration {
	g.t.Helper()
	var last time.Duration
	healthy := false
	for time.Since(start) < watch {
		resp, err := l.Members(context.Background(), &pb.MembersRequest{})
		healthy = err == nil && resp.GetHealthy()
		if !healthy {
			last = time.Since(start)
		}
		time.Sleep(10 * time.Millisecond) // sampling a report over a fixed time
	}
	if !healthy {
		g.t.Fatalf("%s still reports the cluster unhealthy %v after the election", l.ID(), watch)
	}
	return last
}
