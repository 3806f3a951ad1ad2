package transport

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Service is what the gRPC server serves: Leasehold's API as plain Go. A
// cluster node implements it. It receives only requests that passed the
// Validate functions, and returns the errors of this package (ErrNotLeader or
// *NotLeaderError, ErrNoLimit, ErrStale, ErrUnknownOutcome, *InvalidError) or
// a context error; any other error reaches the client as an internal error.
// A denial is a response with allowed false, not an error. An implementation
// that forwards requests to the leader over gRPC passes the errors it gets
// through [FromStatus] before returning them.
//
// Its methods are called concurrently, one goroutine per RPC.
type Service interface {
	Acquire(context.Context, *pb.AcquireRequest) (*pb.AcquireResponse, error)
	Release(context.Context, *pb.ReleaseRequest) (*pb.ReleaseResponse, error)
	SetLimit(context.Context, *pb.SetLimitRequest) (*pb.SetLimitResponse, error)
	GetLimit(context.Context, *pb.GetLimitRequest) (*pb.GetLimitResponse, error)
	DeleteLimit(context.Context, *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error)
	Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error)
	Charge(context.Context, *pb.ChargeRequest) (*pb.ChargeResponse, error)
	Extend(context.Context, *pb.ExtendRequest) (*pb.ExtendResponse, error)
	Restrict(context.Context, *pb.RestrictRequest) (*pb.RestrictResponse, error)
}

// Server adapts a Service to leaseholdpb.LeaseholdServer: each RPC validates
// its request (INVALID_ARGUMENT, without calling the Service, when a field is
// wrong), calls the Service and maps its error with [ToStatus]. It is safe for
// concurrent use if its Service is.
type Server struct {
	pb.UnimplementedLeaseholdServer
	svc Service
}

// NewServer returns a Server that serves svc.
func NewServer(svc Service) *Server {
	return &Server{svc: svc}
}

// Register registers a Server for svc with s, a *grpc.Server or any other
// grpc.ServiceRegistrar. Call it before s starts serving. A *grpc.Server
// should be made with [ServerOptions], which cap the request size and turn a
// request that does not decode into INVALID_ARGUMENT; without them it serves
// the same API with gRPC's defaults (4 MiB, INTERNAL).
func Register(s grpc.ServiceRegistrar, svc Service) {
	s.RegisterService(&serviceDesc, NewServer(svc))
}

// Acquire implements leaseholdpb.LeaseholdServer.
func (s *Server) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return serve(ctx, req, ValidateAcquire, s.svc.Acquire)
}

// Release implements leaseholdpb.LeaseholdServer.
func (s *Server) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return serve(ctx, req, ValidateRelease, s.svc.Release)
}

// SetLimit implements leaseholdpb.LeaseholdServer.
func (s *Server) SetLimit(ctx context.Context, req *pb.SetLimitRequest) (*pb.SetLimitResponse, error) {
	return serve(ctx, req, ValidateSetLimit, s.svc.SetLimit)
}

// GetLimit implements leaseholdpb.LeaseholdServer.
func (s *Server) GetLimit(ctx context.Context, req *pb.GetLimitRequest) (*pb.GetLimitResponse, error) {
	return serve(ctx, req, ValidateGetLimit, s.svc.GetLimit)
}

// DeleteLimit implements leaseholdpb.LeaseholdServer.
func (s *Server) DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	return serve(ctx, req, ValidateDeleteLimit, s.svc.DeleteLimit)
}

// Status implements leaseholdpb.LeaseholdServer. A StatusRequest has no
// fields to validate.
func (s *Server) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	return serve(ctx, req, func(*pb.StatusRequest) error { return nil }, s.svc.Status)
}

// Charge implements leaseholdpb.LeaseholdServer.
func (s *Server) Charge(ctx context.Context, req *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	return serve(ctx, req, ValidateCharge, s.svc.Charge)
}

// Extend implements leaseholdpb.LeaseholdServer.
func (s *Server) Extend(ctx context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return serve(ctx, req, ValidateExtend, s.svc.Extend)
}

// Restrict implements leaseholdpb.LeaseholdServer.
func (s *Server) Restrict(ctx context.Context, req *pb.RestrictRequest) (*pb.RestrictResponse, error) {
	return serve(ctx, req, ValidateRestrict, s.svc.Restrict)
}

// serve validates req, calls the service and maps its error to a status.
func serve[Req, Resp any](ctx context.Context, req Req, validate func(Req) error,
	call func(context.Context, Req) (Resp, error)) (Resp, error) {
	var zero Resp
	if err := validate(req); err != nil {
		return zero, ToStatus(err)
	}
	resp, err := call(ctx, req)
	if err != nil {
		return zero, ToStatus(err)
	}
	return resp, nil
}
