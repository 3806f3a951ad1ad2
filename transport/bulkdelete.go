package transport

import (
	"context"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// BulkDeleteService is what a Service may implement to delete keys by
// prefix (DeleteLimits). The Server serves DeleteLimits from it when its
// Service implements it, and answers UNIMPLEMENTED otherwise, as for
// ListService. DeleteLimits needs the operator role ([MethodRole]).
type BulkDeleteService interface {
	// DeleteLimits deletes one entry's worth of keys (see
	// ValidateDeleteLimits for the request's bounds). A follower returns a
	// *NotLeaderError; a leader that cannot send the command yet, an
	// error that Is ErrUpgradeNeeded.
	DeleteLimits(context.Context, *pb.DeleteLimitsRequest) (*pb.DeleteLimitsResponse, error)
}

// ValidateDeleteLimits checks a DeleteLimitsRequest: prefix and start_after
// of at most MaxKeyLen bytes of valid UTF-8, and a prefix unless
// unpinned_only: an empty prefix without it would delete every limit an
// operator set.
func ValidateDeleteLimits(req *pb.DeleteLimitsRequest) error {
	if err := validateKeyBound("prefix", req.GetPrefix()); err != nil {
		return err
	}
	if err := validateKeyBound("start_after", req.GetStartAfter()); err != nil {
		return err
	}
	if req.GetPrefix() == "" && !req.GetUnpinnedOnly() {
		return invalidf("prefix", "empty without unpinned_only: that deletes every key, the limits operators set "+
			"included; name a prefix, or set unpinned_only to delete every key clients created")
	}
	return nil
}

// DeleteLimits implements leaseholdpb.LeaseholdServer; UNIMPLEMENTED when
// the Service cannot delete in bulk.
func (s *Server) DeleteLimits(ctx context.Context, req *pb.DeleteLimitsRequest) (*pb.DeleteLimitsResponse, error) {
	d, ok := s.svc.(BulkDeleteService)
	if !ok {
		return s.UnimplementedLeaseholdServer.DeleteLimits(ctx, req)
	}
	return serve(ctx, req, ValidateDeleteLimits, d.DeleteLimits)
}
