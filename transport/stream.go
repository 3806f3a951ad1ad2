package transport

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// MaxStreamInFlight is the most Acquires of one AcquireStream the server
// works on at once. While that many wait for their answers it reads no
// more of the stream, so gRPC's flow control holds the client back and a
// stream's memory stays bounded. The SDK sends no more than this many at
// once on a stream.
const MaxStreamInFlight = 64

// AcquireStream implements leaseholdpb.LeaseholdServer: each request is served as the
// unary Acquire would serve it (validation, the Service, ToStatus; behind a
// Guard, an in-flight slot of its own and the inline-limit rule, the role
// having been checked when the stream opened), concurrently, at most
// MaxStreamInFlight at once, and answered on the stream under its id, an
// error as the answer's status. A request's timeout_ns bounds its context
// as a unary call's deadline does. The stream ends, with every answer sent,
// when the client closes its side; when it breaks; or, INVALID_ARGUMENT,
// when a message does not decode (its id cannot be trusted).
func (s *Server) AcquireStream(ss grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) error {
	ctx := ss.Context()
	sg, _ := ctx.Value(streamGuardKey{}).(*streamGuard)
	call := func(ctx context.Context, req any) (any, error) {
		return serve(ctx, req.(*pb.AcquireRequest), ValidateAcquire, s.svc.Acquire)
	}
	slots := make(chan struct{}, MaxStreamInFlight)
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m := new(pb.AcquireStreamRequest)
		f := &frame{Message: m}
		if err := ss.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if f.err != nil {
			return ToStatus(decodeError(f))
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		wg.Go(func() {
			defer func() { <-slots }()
			rctx := ctx
			if d := time.Duration(m.GetTimeoutNs()); d > 0 {
				var cancel context.CancelFunc
				rctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			req := m.GetRequest()
			if req == nil {
				req = &pb.AcquireRequest{} // answered INVALID_ARGUMENT
			}
			var resp any
			var err error
			if sg != nil {
				resp, err = sg.message(rctx, req, call)
			} else {
				resp, err = call(rctx, req)
			}
			out := &pb.AcquireStreamResponse{Id: m.GetId()}
			if err != nil {
				p := status.Convert(err).Proto()
				out.Status = &pb.CallStatus{Code: p.GetCode(), Message: p.GetMessage(), Details: p.GetDetails()}
			} else {
				out.Response = resp.(*pb.AcquireResponse)
			}
			sendMu.Lock()
			defer sendMu.Unlock()
			_ = ss.SendMsg(out) // a broken stream ends RecvMsg too
		})
	}
}

// StreamAnswer returns an AcquireStream answer as the unary Acquire returns
// its outcome: the response, or the status error the call would end with
// (for FromStatus).
func StreamAnswer(m *pb.AcquireStreamResponse) (*pb.AcquireResponse, error) {
	if p := m.GetStatus(); p != nil {
		return nil, status.FromProto(&spb.Status{Code: p.GetCode(), Message: p.GetMessage(), Details: p.GetDetails()}).Err()
	}
	return m.GetResponse(), nil
}

// ContextStatus returns the status error a gRPC call ends with when its
// context ends with err: DEADLINE_EXCEEDED or CANCELED (an unknown outcome
// for FromStatus).
func ContextStatus(err error) error { return status.FromContextError(err).Err() }

// Unimplemented reports whether err, a call's error, says that the server
// does not have the method (UNIMPLEMENTED): a node of an older version.
func Unimplemented(err error) bool { return status.Code(err) == codes.Unimplemented }
