package transport_test

import (
	"bytes"
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
	"google.golang.org/grpc/mem"
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

func (f *fakeService) Charge(ctx context.Context, r *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	return answer[*pb.ChargeResponse](f, ctx, r)
}

func (f *fakeService) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return answer[*pb.ExtendResponse](f, ctx, r)
}

func (f *fakeService) Restrict(ctx context.Context, r *pb.RestrictRequest) (*pb.RestrictResponse, error) {
	return answer[*pb.RestrictResponse](f, ctx, r)
}

func (f *fakeService) ListLimits(ctx context.Context, r *pb.ListLimitsRequest) (*pb.ListLimitsResponse, error) {
	return answer[*pb.ListLimitsResponse](f, ctx, r)
}

func (f *fakeService) DeleteLimits(ctx context.Context, r *pb.DeleteLimitsRequest) (*pb.DeleteLimitsResponse, error) {
	return answer[*pb.DeleteLimitsResponse](f, ctx, r)
}

// failWith returns a handler that fails every call with err.
func failWith(err error) func(context.Context, proto.Message) (proto.Message, error) {
	return func(context.Context, proto.Message) (proto.Message, error) { return nil, err }
}

// dial serves svc over an in-memory listener, from a server made with
// transport.ServerOptions and opts, and returns a client for it. Everything
// is stopped when the test ends.
func dial(t *testing.T, svc transport.Service, opts ...grpc.ServerOption) pb.LeaseholdClient {
	t.Helper()
	return pb.NewLeaseholdClient(dialConn(t, svc, append(transport.ServerOptions(), opts...)...))
}

// dialConn serves svc from a server made with exactly opts, and returns a
// connection to it.
func dialConn(t *testing.T, svc transport.Service, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(opts...)
	transport.Register(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return dialListenerConn(t, lis)
}

// dialListener returns a client that connects through lis.
func dialListener(t *testing.T, lis *bufconn.Listener) pb.LeaseholdClient {
	t.Helper()
	return pb.NewLeaseholdClient(dialListenerConn(t, lis))
}

func dialListenerConn(t *testing.T, lis *bufconn.Listener) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
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
		{"Charge", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Charge(ctx, goodCharge())
		}},
		{"Extend", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Extend(ctx, goodExtend())
		}},
		{"Restrict", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.Restrict(ctx, goodRestrict())
		}},
		{"ListLimits", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.ListLimits(ctx, &pb.ListLimitsRequest{Prefix: "tenant-", PageSize: 10})
		}},
		{"DeleteLimits", func(ctx context.Context, c pb.LeaseholdClient) (proto.Message, error) {
			return c.DeleteLimits(ctx, &pb.DeleteLimitsRequest{Prefix: "tenant-", UnpinnedOnly: true})
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
		{"Charge of 0 tokens", func(ctx context.Context) error {
			req := goodCharge()
			req.Items[1].Tokens = 0
			_, err := c.Charge(ctx, req)
			return err
		}, "items[1].tokens"},
		{"Extend without a TTL", func(ctx context.Context) error {
			req := goodExtend()
			req.TtlNs = 0
			_, err := c.Extend(ctx, req)
			return err
		}, "ttl_ns"},
		{"Restrict with a negative max_debt", func(ctx context.Context) error {
			req := goodRestrict()
			req.Items[0].Limit.MaxDebt = -1
			_, err := c.Restrict(ctx, req)
			return err
		}, "items[0].limit.max_debt"},
		{"ListLimits page over the most", func(ctx context.Context) error {
			_, err := c.ListLimits(ctx, &pb.ListLimitsRequest{PageSize: transport.MaxListPage + 1})
			return err
		}, "page_size"},
		{"ListLimits negative page", func(ctx context.Context) error {
			_, err := c.ListLimits(ctx, &pb.ListLimitsRequest{PageSize: -1})
			return err
		}, "page_size"},
		{"ListLimits prefix too long", func(ctx context.Context) error {
			_, err := c.ListLimits(ctx, &pb.ListLimitsRequest{Prefix: strings.Repeat("k", transport.MaxKeyLen+1)})
			return err
		}, "prefix"},
		{"DeleteLimits of every key, pinned included", func(ctx context.Context) error {
			_, err := c.DeleteLimits(ctx, &pb.DeleteLimitsRequest{})
			return err
		}, "prefix"},
		{"DeleteLimits prefix too long", func(ctx context.Context) error {
			_, err := c.DeleteLimits(ctx, &pb.DeleteLimitsRequest{Prefix: strings.Repeat("k", transport.MaxKeyLen+1), UnpinnedOnly: true})
			return err
		}, "prefix"},
		{"DeleteLimits start_after too long", func(ctx context.Context) error {
			_, err := c.DeleteLimits(ctx, &pb.DeleteLimitsRequest{Prefix: "t", StartAfter: strings.Repeat("k", transport.MaxKeyLen+1)})
			return err
		}, "start_after"},
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
		"Status":      &pb.StatusResponse{NodeId: "n1", NodeState: pb.NodeState_NODE_STATE_LEADER, Term: 3},
		"Charge": &pb.ChargeResponse{Items: []*pb.ChargeItemResult{{Charged: 5, Forgiven: 2, Remaining: -40}, {Charged: 1}},
			RetryAfterNs: -1, LogTimeNs: 8},
		"Extend": &pb.ExtendResponse{Extended: true, TtlNs: int64(time.Second), LogTimeNs: 9},
		"Restrict": &pb.RestrictResponse{Items: []*pb.RestrictItemResult{{Remaining: -3, Lowered: 10}},
			RetryAfterNs: int64(time.Minute), LogTimeNs: 10},
		"ListLimits":   &pb.ListLimitsResponse{Limits: []*pb.ListedLimit{{Key: "tenant-a", Limit: goodLimit(), Pinned: true}}, More: true},
		"DeleteLimits": &pb.DeleteLimitsResponse{Deleted: 1000, LastKey: "tenant-x", More: true, LogTimeNs: 11},
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

// rawCodec sends and receives bytes as they are, so a test can send a
// request that no generated client would encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// invokeRaw calls method with payload as the request's bytes.
func invokeRaw(ctx context.Context, conn *grpc.ClientConn, method string, payload []byte) error {
	var reply []byte
	return conn.Invoke(ctx, method, &payload, &reply, grpc.ForceCodecV2(rawCodec{}))
}

// withBadKey encodes m, whose keys contain the placeholder "\x00KEY\x00",
// with each placeholder's 5 bytes replaced by bytes that are not UTF-8: the
// message's lengths stay right, so only the key's encoding is at fault.
func withBadKey(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b, []byte(badKeyPlaceholder), []byte("\xff\xfe\xfd\xfc\xfb"))
}

const badKeyPlaceholder = "\x00KEY\x00"

// TestUndecodableRequestIsInvalidArgument: a request that does not decode,
// or whose key is not UTF-8, was answered "Internal: grpc: failed to
// unmarshal" (issue 13). With ServerOptions it is INVALID_ARGUMENT naming
// the problem, and never reaches the service.
func TestUndecodableRequestIsInvalidArgument(t *testing.T) {
	t.Parallel()
	svc := &fakeService{handle: failWith(errors.New("the service was called"))}
	conn := dialConn(t, svc, transport.ServerOptions()...)
	acquire := goodAcquire()
	acquire.Items[1].Key = badKeyPlaceholder
	tests := []struct {
		name    string
		method  string
		payload []byte
		field   string // "" for a request that does not decode at all
		reason  string
	}{
		{"truncated varint", pb.Leasehold_Acquire_FullMethodName, []byte{0x10, 0xff}, "", "does not decode as a leasehold.v1.AcquireRequest"},
		{"length past the end", pb.Leasehold_Release_FullMethodName, []byte{0x0a, 0x7f, 'c'}, "", "ReleaseRequest"},
		{"field number 0", pb.Leasehold_SetLimit_FullMethodName, []byte{0x00, 0x01}, "", "SetLimitRequest"},
		{"wrong wire type for a message", pb.Leasehold_Acquire_FullMethodName, []byte{0x25, 1, 2, 3, 4, 0x22, 0x01}, "", "AcquireRequest"},
		{"acquire key not UTF-8", pb.Leasehold_Acquire_FullMethodName, withBadKey(t, acquire), "items[1].key", "not valid UTF-8"},
		{"set key not UTF-8", pb.Leasehold_SetLimit_FullMethodName,
			withBadKey(t, &pb.SetLimitRequest{Key: badKeyPlaceholder, Limit: goodLimit()}), "key", "not valid UTF-8"},
		{"get key not UTF-8", pb.Leasehold_GetLimit_FullMethodName,
			withBadKey(t, &pb.GetLimitRequest{Key: badKeyPlaceholder}), "key", "not valid UTF-8"},
		{"delete key not UTF-8", pb.Leasehold_DeleteLimit_FullMethodName,
			withBadKey(t, &pb.DeleteLimitRequest{Key: badKeyPlaceholder}), "key", "not valid UTF-8"},
		{"list start_after not UTF-8", pb.Leasehold_ListLimits_FullMethodName,
			withBadKey(t, &pb.ListLimitsRequest{StartAfter: badKeyPlaceholder}), "start_after", "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := invokeRaw(t.Context(), conn, tt.method, tt.payload)
			if code := status.Code(err); code != codes.InvalidArgument {
				t.Fatalf("err = %v, want code InvalidArgument", err)
			}
			var ie *transport.InvalidError
			if !errors.As(transport.FromStatus(err), &ie) || ie.Field != tt.field || !strings.Contains(ie.Reason, tt.reason) {
				t.Errorf("FromStatus(%v) = %#v, want an *InvalidError for %q saying %q", err, transport.FromStatus(err), tt.field, tt.reason)
			}
		})
	}
	if n := svc.numCalls(); n != 0 {
		t.Errorf("the service got %d undecodable requests", n)
	}
}

// TestOversizedRequestIsRefused: a Release of 4,000,000 unused counts
// (about 4 MB, under gRPC's 4 MiB default) reached the node and its Raft log
// (issue 13). With ServerOptions a request above MaxRequestBytes is refused
// unread: RESOURCE_EXHAUSTED from gRPC itself, which FromStatus maps to no
// sentinel (not an unknown outcome: a retry cannot help). One just under
// the cap is refused by validation. Neither reaches the service.
func TestOversizedRequestIsRefused(t *testing.T) {
	t.Parallel()
	svc := &fakeService{handle: failWith(errors.New("the service was called"))}
	c := dial(t, svc)
	flood := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, 4_000_000)}
	_, err := c.Release(t.Context(), flood)
	if code := status.Code(err); code != codes.ResourceExhausted || !strings.Contains(err.Error(), "vs. 16384") {
		t.Errorf("Release of 4M unused: err = %v, want ResourceExhausted naming the 16384-byte cap", err)
	}
	checkMatches(t, transport.FromStatus(err))
	under := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, transport.MaxRequestBytes/2)}
	_, err = c.Release(t.Context(), under)
	var ie *transport.InvalidError
	if !errors.As(transport.FromStatus(err), &ie) || ie.Field != "unused" {
		t.Errorf("Release of %d unused: err = %v, want INVALID_ARGUMENT for unused", len(under.Unused), err)
	}
	if n := svc.numCalls(); n != 0 {
		t.Errorf("the service got %d oversized requests", n)
	}
}

// TestRegisterWithoutServerOptions: a server made without ServerOptions
// serves the API as before, with gRPC's own answers to an undecodable
// request (INTERNAL).
func TestRegisterWithoutServerOptions(t *testing.T) {
	t.Parallel()
	svc := &fakeService{handle: func(context.Context, proto.Message) (proto.Message, error) {
		return &pb.AcquireResponse{Allowed: true}, nil
	}}
	conn := dialConn(t, svc)
	resp, err := pb.NewLeaseholdClient(conn).Acquire(t.Context(), goodAcquire())
	if err != nil || !resp.GetAllowed() {
		t.Fatalf("Acquire = %v, %v; want allowed", resp, err)
	}
	err = invokeRaw(t.Context(), conn, pb.Leasehold_Acquire_FullMethodName, []byte{0x10, 0xff})
	if code := status.Code(err); code != codes.Internal {
		t.Errorf("undecodable request without ServerOptions: err = %v, want gRPC's Internal", err)
	}
}

// TestInterceptorSeesUndecodableRequests: a request that does not decode
// still passes through the server's interceptors first, so one that refuses
// the caller (roles, overload) answers before the request's content does.
func TestInterceptorSeesUndecodableRequests(t *testing.T) {
	t.Parallel()
	var seen []string
	var mu sync.Mutex
	deny := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		seen = append(seen, info.FullMethod)
		mu.Unlock()
		if info.FullMethod == pb.Leasehold_SetLimit_FullMethodName {
			return nil, status.Error(codes.PermissionDenied, "operators only")
		}
		return h(ctx, req)
	}
	svc := &fakeService{handle: failWith(errors.New("the service was called"))}
	conn := dialConn(t, svc, append(transport.ServerOptions(), grpc.UnaryInterceptor(deny))...)
	junk := []byte{0x10, 0xff}
	if err := invokeRaw(t.Context(), conn, pb.Leasehold_SetLimit_FullMethodName, junk); status.Code(err) != codes.PermissionDenied {
		t.Errorf("undecodable SetLimit from a denied caller: err = %v, want PermissionDenied", err)
	}
	if err := invokeRaw(t.Context(), conn, pb.Leasehold_Acquire_FullMethodName, junk); status.Code(err) != codes.InvalidArgument {
		t.Errorf("undecodable Acquire: err = %v, want InvalidArgument", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Errorf("the interceptor saw %v, want both calls", seen)
	}
}
