package cluster

import (
	"context"
	"testing"
	"time"

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
