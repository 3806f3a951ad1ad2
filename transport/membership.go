package transport

import (
	"context"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// MembershipService is what a Service may implement besides the client
// API: the operator's view and control of the cluster's membership. The
// Server serves Members and RemoveMember from it when its Service
// implements it, and answers them UNIMPLEMENTED otherwise, so a Service
// without membership (a test fake) needs no change. Both need the operator
// role ([MethodRole]).
//
// Its methods are called concurrently, one goroutine per RPC.
type MembershipService interface {
	// Members lists the members as the leader sees them. A follower
	// returns a *NotLeaderError.
	Members(context.Context, *pb.MembersRequest) (*pb.MembersResponse, error)
	// RemoveMember removes a server from the Raft configuration, on the
	// leader. It returns an *InvalidError (field "id") when the id is not
	// a member, or when the removal would leave fewer healthy voters than a
	// quorum and the request does not force it; a *NotLeaderError on a
	// follower, or on a leader that handed leadership over first to remove
	// itself.
	RemoveMember(context.Context, *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error)
}

// ValidateRemoveMember checks a RemoveMemberRequest: the id is required.
func ValidateRemoveMember(req *pb.RemoveMemberRequest) error {
	if req.GetId() == "" {
		return invalidf("id", "empty; name the member to remove (leasehold members lists them)")
	}
	if len(req.GetId()) > MaxNodeIDLen {
		return invalidf("id", "%d bytes; a node id has at most %d", len(req.GetId()), MaxNodeIDLen)
	}
	return nil
}

// MaxNodeIDLen is the longest node id, in bytes.
const MaxNodeIDLen = 128

// Members implements leaseholdpb.LeaseholdServer; UNIMPLEMENTED when the
// Service has no membership.
func (s *Server) Members(ctx context.Context, req *pb.MembersRequest) (*pb.MembersResponse, error) {
	m, ok := s.svc.(MembershipService)
	if !ok {
		return s.UnimplementedLeaseholdServer.Members(ctx, req)
	}
	return serve(ctx, req, func(*pb.MembersRequest) error { return nil }, m.Members)
}

// RemoveMember implements leaseholdpb.LeaseholdServer; UNIMPLEMENTED when
// the Service has no membership.
func (s *Server) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	m, ok := s.svc.(MembershipService)
	if !ok {
		return s.UnimplementedLeaseholdServer.RemoveMember(ctx, req)
	}
	return serve(ctx, req, ValidateRemoveMember, m.RemoveMember)
}
