package transport_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fakeService answers every method with handle and records what reached it.
// It is safe for concurrent use.
type fakeService struct {
	handle func(ctx context.Context, req proto.Message) (proto.Message, error)

	mu    sync.Mutex
	calls []proto.Message
}

func (f *fakeService) call(ctx context.Context, req proto.Message) (proto.Message, error) {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	f.mu.Unlock()
	return f.handle(ctx, req)
}

func (f *fakeService) numCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// answer is fakeService.call with the response's type asserted; a nil
// response becomes a typed nil.
func answer[Resp proto.Message](f *fakeService, ctx context.Context, req proto.Message) (Resp, error) {
	resp, err := f.call(ctx, req)
	r, _ := resp.(Resp)
	return r, err
}

func (f *fakeService) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return answer[*pb.AcquireResponse](f, ctx, r)
}

func (f *fakeService) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return answer[*pb.ReleaseResponse](f, ctx, r)
}

func (f *fakeService) SetLimit(ctx context.Context, r *pb.SetLimitRequest) (*pb.SetLimitResponse, error) {
	return answer[*pb.SetLimitResponse](f, ctx, r)
}

func (f *fakeService) GetLimit(ctx context.Context, r *pb.GetLimitRequest) (*pb.GetLimitResponse, error) {
	return answer[*pb.GetLimitResponse](f, ctx, r)
}

func (f *fakeService) DeleteLimit(ctx context.Context, r *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	return answer[*pb.DeleteLimitResponse](f, ctx, r)
}

func (f *fakeService) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	return answer[*pb.StatusResponse](f, ctx, r)
}

// failWith returns a handler that fails every call with err.
func failWith(err error) func(context.Context, proto.Message) (proto.Message, error) {
	return func(context.Context, proto.Message) (proto.Message, error) { return nil, err }
}

// dial serves svc over an in-memory listener and returns a client for it.
// Everything is stopped when the test ends.
func dial(t *testing.T, svc transport.Service) pb.LeaseholdClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	transport.Register(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return dialListener(t, lis)
}

// dialListener returns a client that connects through lis.
func dialListener(t *testing.T, lis *bufconn.Listener) pb.LeaseholdClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewLeaseholdClient(conn)
}

// rpc is one call of each method, with a valid request unless changed.
type rpc struct {
	name string
	call func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error)
}

// validRPCs calls each method once with a valid request.
func validRPCs() []rpc {
	return []rpc{
		{"Acquire", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Acquire(ctx, goodAcquire())
		}},
		{"Release", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 2, LeaseId: 1})
		}},
		{"SetLimit", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: goodLimit()})
		}},
		{"GetLimit", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.GetLimit(ctx, &pb.GetLimitRequest{Key: "k"})
		}},
		{"DeleteLimit", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: "k"})
		}},
		{"Status", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Status(ctx, &pb.StatusRequest{})
		}},
	}
}

// TestServerRejectsInvalid checks that a bad request never reaches the
// service and comes back as INVALID_ARGUMENT naming the field.
func TestServerRejectsInvalid(t *testing.T) {
	t.Parallel()
	svc := &fakeService{handle: failWith(errors.New("the service was called"))}
	c := dial(t, svc)
	tests := []struct {
		name  string
		call  func(ctx context.Context) error
		field string
	}{
		{"Acquire key too long", func(ctx context.Context) error {
			req := goodAcquire()
			req.Items[1].Key = strings.Repeat("k", 600)
			_, err := c.Acquire(ctx, req)
			return err
		}, "items[1].key"},
		{"Acquire unknown algorithm", func(ctx context.Context) error {
			req := goodAcquire()
			req.Items[0].Limit.Algorithm = pb.Algorithm_ALGORITHM_UNSPECIFIED
			_, err := c.Acquire(ctx, req)
			return err
		}, "items[0].limit.algorithm"},
		{"Release lease_id 0", func(ctx context.Context) error {
			_, err := c.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1})
			return err
		}, "lease_id"},
		{"SetLimit without limit", func(ctx context.Context) error {
			_, err := c.SetLimit(ctx, &pb.SetLimitRequest{Key: "k"})
			return err
		}, "limit"},
		{"GetLimit without key", func(ctx context.Context) error {
			_, err := c.GetLimit(ctx, &pb.GetLimitRequest{})
			return err
		}, "key"},
		{"DeleteLimit without key", func(ctx context.Context) error {
			_, err := c.DeleteLimit(ctx, &pb.DeleteLimitRequest{})
			return err
		}, "key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(t.Context())
			if code := status.Code(err); code != codes.InvalidArgument {
				t.Fatalf("err = %v, want code InvalidArgument", err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "invalid "+tt.field+":") {
				t.Errorf("message %q does not name the field %s", msg, tt.field)
			}
			var ie *transport.InvalidError
			if !errors.As(transport.FromStatus(err), &ie) || ie.Field != tt.field {
				t.Errorf("FromStatus(%v) = %#v, want an *InvalidError for %s", err, transport.FromStatus(err), tt.field)
			}
		})
	}
	if n := svc.numCalls(); n != 0 {
		t.Errorf("the service got %d invalid requests", n)
	}
}

// TestServerMapsErrors checks that each service error reaches the client
// with its code, and back through FromStatus as the same Go error, on every
// method.
func TestServerMapsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		match []error
	}{
		{"not leader", &transport.NotLeaderError{LeaderID: "n3", LeaderRaftAddr: "10.0.0.3:7000"},
			codes.FailedPrecondition, []error{transport.ErrNotLeader}},
		{"no limit", fmt.Errorf("key %q: %w", "k", transport.ErrNoLimit), codes.NotFound, []error{transport.ErrNoLimit}},
		{"stale", transport.ErrStale, codes.Aborted, []error{transport.ErrStale}},
		{"unknown outcome", fmt.Errorf("%w: leadership lost", transport.ErrUnknownOutcome),
			codes.Unavailable, []error{transport.ErrUnknownOutcome}},
		{"invalid in apply", &transport.InvalidError{Reason: "lease 7 belongs to another client"},
			codes.InvalidArgument, []error{transport.ErrInvalid}},
		{"internal", errors.New("snapshot failed"), codes.Internal, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t, &fakeService{handle: failWith(tt.err)})
			for _, r := range validRPCs() {
				resp, err := r.call(t.Context(), c)
				if code := status.Code(err); code != tt.code {
					t.Errorf("%s: err = %v, want code %v", r.name, err, tt.code)
				}
				if resp != nil && !isNil(resp) {
					t.Errorf("%s: response %v with an error", r.name, resp)
				}
				checkMatches(t, transport.FromStatus(err), tt.match...)
			}
		})
	}

	t.Run("not leader detail", func(t *testing.T) {
		t.Parallel()
		want := transport.NotLeaderError{LeaderID: "n3", LeaderRaftAddr: "10.0.0.3:7000"}
		c := dial(t, &fakeService{handle: failWith(fmt.Errorf("forward: %w", &want))})
		_, err := c.Acquire(t.Context(), goodAcquire())
		var nl *transport.NotLeaderError
		if !errors.As(transport.FromStatus(err), &nl) || *nl != want {
			t.Errorf("FromStatus(%v) = %#v, want %#v", err, transport.FromStatus(err), &want)
		}
	})
}

// isNil reports whether m is a typed nil message, which is how a generated
// client returns no response.
func isNil(m proto.Message) bool { return !m.ProtoReflect().IsValid() }

// TestServerResponses checks that valid requests reach the service unchanged
// and that its responses, denials included, come back as responses.
func TestServerResponses(t *testing.T) {
	t.Parallel()
	denial := &pb.AcquireResponse{Allowed: false, RetryAfterNs: int64(1500 * time.Millisecond),
		Items: []*pb.ItemGrant{{Remaining: 0}, {Remaining: 40}}, LogTimeNs: 123}
	responses := map[string]proto.Message{
		"Acquire":     denial,
		"Release":     &pb.ReleaseResponse{Released: true, LogTimeNs: 5},
		"SetLimit":    &pb.SetLimitResponse{LogTimeNs: 6},
		"GetLimit":    &pb.GetLimitResponse{Found: true, Limit: goodLimit(), Pinned: true},
		"DeleteLimit": &pb.DeleteLimitResponse{LogTimeNs: 7},
		"Status":      &pb.StatusResponse{NodeId: "n1", State: "leader", Term: 3},
	}
	svc := &fakeService{handle: func(_ context.Context, req proto.Message) (proto.Message, error) {
		name := strings.TrimSuffix(string(req.ProtoReflect().Descriptor().Name()), "Request")
		return responses[name], nil
	}}
	c := dial(t, svc)
	for i, r := range validRPCs() {
		resp, err := r.call(t.Context(), c)
		if err != nil {
			t.Errorf("%s: %v", r.name, err)
			continue
		}
		if want := responses[r.name]; !proto.Equal(resp, want) {
			t.Errorf("%s: response %v, want %v", r.name, resp, want)
		}
		svc.mu.Lock()
		got := svc.calls[i]
		svc.mu.Unlock()
		if name := string(got.ProtoReflect().Descriptor().Name()); name != r.name+"Request" {
			t.Errorf("%s reached the service as %s", r.name, name)
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if got := svc.calls[0]; !proto.Equal(got, goodAcquire()) {
		t.Errorf("Acquire reached the service as %v, want %v", got, goodAcquire())
	}
}

// TestServerCanceled checks that a call canceled while the service waits for
// commit reaches the client as an unknown outcome, and that the service sees
// its context end.
func TestServerCanceled(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	serviceErr := make(chan error, 1)
	svc := &fakeService{handle: func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		close(started)
		<-ctx.Done() // as a node waiting for its command to commit
		serviceErr <- ctx.Err()
		return nil, ctx.Err()
	}}
	c := dial(t, svc)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-started
		cancel()
	}()
	_, err := c.Acquire(ctx, goodAcquire())
	checkMatches(t, transport.FromStatus(err), context.Canceled, transport.ErrUnknownOutcome)
	if err := <-serviceErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the service's context ended with %v, want context.Canceled", err)
	}
}

// TestConnectionError checks that a server that cannot be reached is an
// unknown outcome: the client cannot tell whether a request got through.
func TestConnectionError(t *testing.T) {
	t.Parallel()
	lis := bufconn.Listen(1 << 10)
	lis.Close()
	c := dialListener(t, lis)
	_, err := c.Acquire(t.Context(), goodAcquire())
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("err = %v, want code Unavailable", err)
	}
	checkMatches(t, transport.FromStatus(err), transport.ErrUnknownOutcome)
}
