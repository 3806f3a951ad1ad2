package transport

import (
	"context"
	"unicode/utf8"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// ListService is what a Service may implement to list its keys' limits
// (ListLimits). The Server serves ListLimits from it when its Service
// implements it, and answers UNIMPLEMENTED otherwise, so a Service without
// it (a test fake) needs no change. ListLimits needs the operator role
// ([MethodRole]): it names every key.
type ListService interface {
	// ListLimits returns a page of keys in byte order (see
	// ValidateListLimits for the request's bounds). A follower returns a
	// *NotLeaderError.
	ListLimits(context.Context, *pb.ListLimitsRequest) (*pb.ListLimitsResponse, error)
}

// Page sizes of ListLimits: page_size 0 means DefaultListPage; more than
// MaxListPage is refused.
const (
	DefaultListPage = 100
	MaxListPage     = 1000
)

// ValidateListLimits checks a ListLimitsRequest: prefix and start_after of
// at most MaxKeyLen bytes of valid UTF-8 (either may be empty), page_size
// 0 to MaxListPage.
func ValidateListLimits(req *pb.ListLimitsRequest) error {
	for _, f := range []struct{ name, v string }{{"prefix", req.GetPrefix()}, {"start_after", req.GetStartAfter()}} {
		if err := validateKeyBound(f.name, f.v); err != nil {
			return err
		}
	}
	if n := req.GetPageSize(); n < 0 || n > MaxListPage {
		return invalidf("page_size", "%d; want 1 to %d, or 0 for %d", n, MaxListPage, DefaultListPage)
	}
	return nil
}

// validateKeyBound checks a prefix or a cursor among keys: at most
// MaxKeyLen bytes of valid UTF-8, possibly empty.
func validateKeyBound(field, v string) error {
	switch {
	case len(v) > MaxKeyLen:
		return invalidf(field, "%d bytes; a key has at most %d", len(v), MaxKeyLen)
	case !utf8.ValidString(v):
		return invalidf(field, "%q is not valid UTF-8; keys are UTF-8 strings", v)
	}
	return nil
}

// ListLimits implements leaseholdpb.LeaseholdServer; UNIMPLEMENTED when the
// Service cannot list.
func (s *Server) ListLimits(ctx context.Context, req *pb.ListLimitsRequest) (*pb.ListLimitsResponse, error) {
	l, ok := s.svc.(ListService)
	if !ok {
		return s.UnimplementedLeaseholdServer.ListLimits(ctx, req)
	}
	return serve(ctx, req, ValidateListLimits, l.ListLimits)
}
