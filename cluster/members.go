package cluster

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

var _ transport.MembershipService = (*Node)(nil)

// errNoMembership answers the membership calls of a node without
// Config.Gossip.
var errNoMembership = &transport.InvalidError{Reason: "membership is off on this node (serve without --gossip-addr): " +
	"the cluster is static"}

// nodeState is the node's part in Raft as the Status enum says it.
func (n *Node) nodeState() pb.NodeState {
	if n.Removed() {
		return pb.NodeState_NODE_STATE_REMOVED
	}
	switch n.raft.State() {
	case raft.Leader:
		return pb.NodeState_NODE_STATE_LEADER
	case raft.Follower:
		return pb.NodeState_NODE_STATE_FOLLOWER
	case raft.Candidate:
		return pb.NodeState_NODE_STATE_CANDIDATE
	}
	return pb.NodeState_NODE_STATE_SHUTDOWN
}

// raftState returns the node's state in lower case, as Health and the
// console show it: leader, follower, candidate, shutdown, or removed (the
// node learned it was removed from the configuration).
func (n *Node) raftState() string {
	if n.Removed() {
		return "removed"
	}
	return strings.ToLower(n.raft.State().String())
}

// Removed reports whether this node learned it was removed from the
// cluster; it then takes no part in Raft (DESIGN.md, "Membership").
func (n *Node) Removed() bool { return n.mem != nil && n.mem.removed.Load() }

// MemberInfo is what this node knows of a member from gossip.
type MemberInfo struct {
	ID         string
	RaftAddr   string
	ClientAddr string // client API (gRPC); "" if the member did not say
	HTTPAddr   string // "" if the member did not say
	GossipAddr string
	Alive      bool
}

// Member returns what gossip says of member id (for instance the leader's,
// from Leader): where to reach its client API and HTTP face. ok is false
// when the node has no membership or does not know id.
func (n *Node) Member(id string) (MemberInfo, bool) {
	if n.mem == nil || n.mem.g == nil {
		return MemberInfo{}, false
	}
	mb, ok := n.mem.g.member(id)
	if !ok {
		return MemberInfo{}, false
	}
	return MemberInfo{ID: id, RaftAddr: mb.meta.Raft, ClientAddr: n.mem.servedAddr(id, mb.meta.Client),
		HTTPAddr:   n.mem.servedAddr(id, mb.meta.HTTP),
		GossipAddr: mb.addr, Alive: mb.state == memberlist.StateAlive}, true
}

// GossipAddr returns the gossip address this node advertises, "" without
// membership.
func (n *Node) GossipAddr() string {
	if n.mem == nil || n.mem.g == nil {
		return ""
	}
	return n.mem.g.addr()
}

// Leave asks the leader to remove this node from the configuration
// (handing leadership over first if it leads), waits until it is removed or
// ctx ends, and leaves gossip; Close then stops it. serve calls it on
// SIGTERM with --leave-on-terminate. A node without membership, or the only
// voter, returns an error and changes nothing.
func (n *Node) Leave(ctx context.Context) error {
	if n.mem == nil {
		return errors.New("leave: membership is off on this node")
	}
	return n.mem.leave(ctx)
}

// Members lists the cluster's members as the leader sees them: every server
// of the Raft configuration and every gossip member, with suffrage, gossip
// state, health and stats; a healthy member's stable-since is the leader's
// count of how long it has been healthy, the one promotions use
// (NotifyState). A follower returns a *transport.NotLeaderError.
func (n *Node) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := n.mem
	if m == nil {
		return nil, errNoMembership
	}
	if !n.IsLeader() {
		return nil, n.notLeader()
	}
	cfg, _, err := m.configuration()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	st, healthySince := m.verdictLocked(), maps.Clone(m.mu.healthySince)
	m.mu.Unlock()
	resp := &pb.MembersResponse{LeaderId: n.cfg.ID}
	byID := map[string]*pb.Member{}
	var order []string
	get := func(id string) *pb.Member {
		if p, ok := byID[id]; ok {
			return p
		}
		p := &pb.Member{Id: id, Suffrage: pb.Suffrage_SUFFRAGE_NONE, GossipState: pb.GossipState_GOSSIP_STATE_NONE, LastContactNs: -1}
		byID[id] = p
		order = append(order, id)
		return p
	}
	for _, s := range cfg.Servers {
		p := get(string(s.ID))
		p.RaftAddr = string(s.Address)
		switch s.Suffrage {
		case raft.Voter:
			p.Suffrage = pb.Suffrage_SUFFRAGE_VOTER
		case raft.Nonvoter:
			p.Suffrage = pb.Suffrage_SUFFRAGE_NONVOTER
		case raft.Staging:
			p.Suffrage = pb.Suffrage_SUFFRAGE_STAGING
		}
	}
	for _, mb := range m.g.members() {
		p := get(mb.id)
		p.GossipAddr = mb.addr
		switch mb.state {
		case memberlist.StateAlive:
			p.GossipState = pb.GossipState_GOSSIP_STATE_ALIVE
		case memberlist.StateSuspect:
			p.GossipState = pb.GossipState_GOSSIP_STATE_SUSPECT
		case memberlist.StateDead:
			p.GossipState = pb.GossipState_GOSSIP_STATE_DEAD
		case memberlist.StateLeft:
			p.GossipState = pb.GossipState_GOSSIP_STATE_LEFT
		}
		if mb.metaOK {
			p.ClientAddr, p.HttpAddr = n.mem.servedAddr(mb.id, mb.meta.Client), n.mem.servedAddr(mb.id, mb.meta.HTTP)
			p.Version, p.VoterWish = mb.meta.Version, !mb.meta.NonVoter
			if p.RaftAddr == "" {
				p.RaftAddr = mb.meta.Raft
			}
			p.LastIndex, p.LastTerm = mb.meta.LastIndex, mb.meta.LastTerm
			if mb.meta.LastContactMs >= 0 && mb.state == memberlist.StateAlive {
				p.LastContactNs = int64(time.Duration(mb.meta.LastContactMs) * time.Millisecond)
			}
		}
	}
	self := get(n.cfg.ID)
	self.Leader, self.LastContactNs, self.LastIndex, self.LastTerm = true, 0, n.raft.LastIndex(), m.lastLogTerm()
	self.GossipState = pb.GossipState_GOSSIP_STATE_ALIVE
	healthy := true
	for _, id := range order {
		p := byID[id]
		if st != nil {
			if s, ok := st.Servers[raft.ServerID(id)]; ok {
				p.Healthy = s.Health.Healthy
				// Our count, not autopilot's StableSince, which v0.3.0
				// never moves once the member is in its state (promoter).
				if since, ok := healthySince[id]; ok && p.Healthy {
					p.StableSinceUnixNs = since.UnixNano()
				}
			}
		}
		if p.Suffrage != pb.Suffrage_SUFFRAGE_NONE && !p.Healthy {
			healthy = false
		}
		resp.Members = append(resp.Members, p)
	}
	slices.SortFunc(resp.Members, func(a, b *pb.Member) int { return strings.Compare(a.Id, b.Id) })
	resp.Healthy = healthy && st != nil
	resp.FailureTolerance = int32(failureTolerance(cfg, func(id string) bool { return byID[id].GetHealthy() || id == n.cfg.ID }))
	return resp, nil
}

// failureTolerance is, on the leader with membership on, how many more
// voters may fail with a quorum of healthy ones left, as Members reports
// it; -1 on a follower, without membership, or when the configuration
// cannot be read. It reads local state only (raft's latest configuration,
// autopilot's last state), so a metrics scrape may call it.
func (n *Node) failureTolerance() int {
	m := n.mem
	if m == nil || !n.IsLeader() || n.Removed() {
		return -1
	}
	cfg, _, err := m.configuration()
	if err != nil {
		return -1
	}
	return failureTolerance(cfg, m.healthy)
}

// failureTolerance is how many more voters may fail with a quorum of the
// configuration's voters left, counting healthy ones only: healthy voters
// minus a quorum, at least 0.
func failureTolerance(cfg raft.Configuration, healthy func(string) bool) int {
	voters, ok := 0, 0
	for _, s := range cfg.Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if healthy(string(s.ID)) {
			ok++
		}
	}
	return max(0, ok-(voters/2+1))
}

// RemoveMember removes a server from the Raft configuration, on the leader
// (transport.MembershipService). Without force it is refused, with an
// *transport.InvalidError, when the voters left would not include a quorum
// of healthy ones; removals are serialized and each checked against the
// configuration the one before left; the leader asks each voter left over
// Raft whether it follows (quorumLeft; a voter that does not answer costs
// up to twice ProbeTimeout). The leader asked to remove itself hands
// leadership over and returns a *transport.NotLeaderError, so the caller
// retries on the new leader. A running member that was removed is
// told, and stops taking part.
func (n *Node) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	if err := transport.ValidateRemoveMember(req); err != nil {
		return nil, err
	}
	if n.mem == nil {
		return nil, errNoMembership
	}
	idx, err := n.mem.remove(ctx, req.GetId(), req.GetForce())
	if err != nil {
		return nil, err
	}
	return &pb.RemoveMemberResponse{Index: idx}, nil
}
