package cluster

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// memberOnLeader returns member id as the leader's Members answer reports
// it; nil if the call fails or does not list id.
func (g *gossipCluster) memberOnLeader(id string) *pb.Member {
	resp, err := g.leader().Members(context.Background(), &pb.MembersRequest{})
	if err != nil {
		return nil
	}
	for _, m := range resp.GetMembers() {
		if m.GetId() == id {
			return m
		}
	}
	return nil
}

// TestMembersStableSinceMovesAfterRecovery: Members reported autopilot's
// StableSince, which raft-autopilot v0.3.0 never moves once a server is in
// the leader's state, so a voter that stopped showed as stable while it
// was down, and, back, as stable since it first appeared.
func TestMembersStableSinceMovesAfterRecovery(t *testing.T) {
	g, _, _, down := healthyThree(t)
	id := down.ID()
	g.mu.Lock()
	cfg := g.cfgs[id]
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if err := down.close(ctx, false); err != nil {
		t.Fatalf("stop %s: %v", id, err)
	}
	var m *pb.Member
	waitFor(t, opWait, id+" unhealthy on the leader", func() bool {
		m = g.memberOnLeader(id)
		return m != nil && !m.GetHealthy()
	})
	if s := m.GetStableSinceUnixNs(); s != 0 {
		t.Errorf("%s stopped and unhealthy, reported stable since %v, want none", id, time.Unix(0, s))
	}

	cfg.Listener, cfg.RaftAddr = nil, down.RaftAddr()
	restarted := time.Now()
	if _, err := g.open(cfg, nil); err != nil {
		t.Fatalf("restart %s: %v", id, err)
	}
	waitFor(t, opWait, id+" healthy again on the leader", func() bool {
		m = g.memberOnLeader(id)
		return m.GetHealthy()
	})
	if s := time.Unix(0, m.GetStableSinceUnixNs()); s.Before(restarted) {
		t.Errorf("%s healthy again, reported stable since %v, want after its restart at %v",
			id, s.Format(time.RFC3339Nano), restarted.Format(time.RFC3339Nano))
	}
}

// TestReelectedLeaderDoesNotReportItsOldVerdict: a node elected again kept
// autopilot's verdict from its earlier leadership until its first round of
// the new one, and the failure tolerance its metrics report (and Members)
// came from it. Here the leader is given such a verdict, of the term
// before, that finds a healthy follower unhealthy; with no verdict of its
// own term the leader counts the voters alive in gossip.
func TestReelectedLeaderDoesNotReportItsOldVerdict(t *testing.T) {
	_, _, l, f := healthyThree(t)
	m := l.mem
	m.mu.Lock()
	old := *m.mu.state
	old.Servers = maps.Clone(old.Servers)
	srv := *old.Servers[raft.ServerID(f.ID())]
	srv.Health.Healthy = false
	old.Servers[raft.ServerID(f.ID())] = &srv
	m.mu.state, m.mu.stateTerm = &old, l.raft.CurrentTerm()-1
	m.mu.Unlock()
	if got := l.failureTolerance(); got != 1 {
		t.Fatalf("failure tolerance of three voters alive, with a verdict of the term before finding %s unhealthy: %d, want 1",
			f.ID(), got)
	}
}
