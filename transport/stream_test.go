package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// streamErr is the error an AcquireStream answer carries, as a status
// error like a unary call's (nil if it carries a response).
func streamErr(m *pb.AcquireStreamResponse) error {
	_, err := transport.StreamAnswer(m)
	return err
}

// acquireOnStream sends req alone on a new AcquireStream and returns its
// answer as the unary Acquire returns one.
func acquireOnStream(ctx context.Context, c pb.LeaseholdClient, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	st, err := c.AcquireStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&pb.AcquireStreamRequest{Id: 7, Request: req}); err != nil {
		return nil, err
	}
	m, err := st.Recv()
	if err != nil {
		return nil, err
	}
	if m.GetId() != 7 {
		return nil, fmt.Errorf("answer to id %d, want 7", m.GetId())
	}
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("after the answer: %v, want the stream's end", err)
	}
	return transport.StreamAnswer(m)
}

// TestAcquireStreamAnswersAsUnary: every outcome of an Acquire (an answer,
// each error of the service, an invalid request) comes back on the stream
// with the status the unary call ends with, details included, so that the
// SDK maps both alike (FromStatus).
func TestAcquireStreamAnswersAsUnary(t *testing.T) {
	t.Parallel()
	bad := goodAcquire()
	bad.Items[0].Count = 0
	tests := []struct {
		name string
		err  error
		req  *pb.AcquireRequest
	}{
		{"answer", nil, goodAcquire()},
		{"not leader", &transport.NotLeaderError{LeaderID: "n3", LeaderRaftAddr: "10.0.0.3:7000", LeaderClientAddr: "10.0.0.3:7101"}, goodAcquire()},
		{"no limit", &transport.NoLimitError{Key: "k"}, goodAcquire()},
		{"stale", transport.ErrStale, goodAcquire()},
		{"unknown outcome", fmt.Errorf("%w: leadership lost", transport.ErrUnknownOutcome), goodAcquire()},
		{"overloaded", &transport.OverloadedError{RetryAfter: 250 * time.Millisecond}, goodAcquire()},
		{"invalid in apply", &transport.InvalidError{Reason: "lease 7 belongs to another client"}, goodAcquire()},
		{"internal", errors.New("snapshot failed"), goodAcquire()},
		{"invalid request", nil, bad},
		{"no request", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t, &fakeService{handle: func(context.Context, proto.Message) (proto.Message, error) {
				if tt.err != nil {
					return nil, tt.err
				}
				return &pb.AcquireResponse{Allowed: true, Items: []*pb.ItemGrant{{Granted: 1}}, LogTimeNs: 42}, nil
			}})
			unary, uerr := c.Acquire(t.Context(), tt.req)
			streamed, serr := acquireOnStream(t.Context(), c, tt.req)
			if !proto.Equal(status.Convert(uerr).Proto(), status.Convert(serr).Proto()) {
				t.Errorf("stream: %v; unary: %v", serr, uerr)
			}
			if !proto.Equal(unary, streamed) {
				t.Errorf("stream answered %v; unary %v", streamed, unary)
			}
			if uerr == nil && !unary.GetAllowed() {
				t.Errorf("unary answered %v, want the service's answer", unary)
			}
		})
	}
}

// TestAcquireStreamAnswersEachByID: requests on one stream are served
// concurrently and each answer carries its request's id, so a slow
// request does not hold back the one sent after it.
func TestAcquireStreamAnswersEachByID(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c := dial(t, &fakeService{handle: func(ctx context.Context, req proto.Message) (proto.Message, error) {
		r := req.(*pb.AcquireRequest)
		if r.GetItems()[0].GetKey() == "slow" {
			<-release
		}
		return &pb.AcquireResponse{Allowed: true, LogTimeNs: int64(r.GetSeq())}, nil
	}})
	st, err := c.AcquireStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	slow, fast := goodAcquire(), goodAcquire()
	slow.Items[0].Key, slow.Seq, fast.Seq = "slow", 11, 12
	for id, req := range map[uint64]*pb.AcquireRequest{1: slow, 2: fast} {
		if err := st.Send(&pb.AcquireStreamRequest{Id: id, Request: req}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []struct{ id, seq uint64 }{{2, 12}, {1, 11}} {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetId() != want.id || m.GetResponse().GetLogTimeNs() != int64(want.seq) {
			t.Errorf("answer %v; want id %d with seq %d's answer", m, want.id, want.seq)
		}
		if want.id == 2 {
			close(release)
		}
	}
}

// TestAcquireStreamBoundsRequestsInFlight: while MaxStreamInFlight
// requests of a stream wait for the service, the server reads no more of
// it (the client's sends wait on flow control), and every request is
// answered once the service answers.
func TestAcquireStreamBoundsRequestsInFlight(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	inflight, most := 0, 0
	release := make(chan struct{})
	svc := &fakeService{handle: func(ctx context.Context, req proto.Message) (proto.Message, error) {
		mu.Lock()
		inflight++
		most = max(most, inflight)
		mu.Unlock()
		<-release
		mu.Lock()
		inflight--
		mu.Unlock()
		return &pb.AcquireResponse{Allowed: true}, nil
	}}
	c := dial(t, svc)
	st, err := c.AcquireStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	const sent = 3 * transport.MaxStreamInFlight
	sendErr := make(chan error, 1)
	go func() {
		for id := range uint64(sent) {
			if err := st.Send(&pb.AcquireStreamRequest{Id: id + 1, Request: goodAcquire()}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	waitFor(t, "the bound to be reached", func() bool { return svc.numCalls() >= transport.MaxStreamInFlight })
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	// Every request is on its way; the server must take no more of them.
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); {
		if n := svc.numCalls(); n > transport.MaxStreamInFlight {
			t.Fatalf("%d requests reached the service at once; the bound is %d", n, transport.MaxStreamInFlight)
		}
	}
	close(release)
	seen := make(map[uint64]bool)
	for range sent {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if seen[m.GetId()] || streamErr(m) != nil {
			t.Errorf("answer %v: repeated or failed", m)
		}
		seen[m.GetId()] = true
	}
	if most != transport.MaxStreamInFlight {
		t.Errorf("at most %d requests in the service at once; want %d", most, transport.MaxStreamInFlight)
	}
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling a condition, with a deadline
	}
}

// TestAcquireStreamTimeout: a request's timeout_ns is its deadline in the
// service, as a unary call's deadline is; without one it has none.
func TestAcquireStreamTimeout(t *testing.T) {
	t.Parallel()
	deadlines := make(chan time.Time, 2)
	c := dial(t, &fakeService{handle: func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		d, _ := ctx.Deadline()
		deadlines <- d
		return &pb.AcquireResponse{Allowed: true}, nil
	}})
	st, err := c.AcquireStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	for id, timeout := range []time.Duration{0, time.Hour} {
		if err := st.Send(&pb.AcquireStreamRequest{Id: uint64(id + 1), Request: goodAcquire(), TimeoutNs: int64(timeout)}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		d := <-deadlines
		switch {
		case timeout == 0 && !d.IsZero():
			t.Errorf("no timeout: the service's deadline is %v, want none", d)
		case timeout > 0 && (d.Before(before.Add(timeout)) || d.After(time.Now().Add(timeout))):
			t.Errorf("timeout %v: the service's deadline is %v from the send", timeout, d.Sub(before))
		}
	}
}

// TestAcquireStreamShedsEachRequestBeyondMaxInFlight: behind a Guard each
// request of a stream takes an in-flight slot of its own, as a unary call
// does (the stream itself takes none): beyond MaxInFlight a request is
// answered RESOURCE_EXHAUSTED with the retry hint and the stream goes on.
func TestAcquireStreamShedsEachRequestBeyondMaxInFlight(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	svc := &fakeService{handle: func(ctx context.Context, _ proto.Message) (proto.Message, error) {
		<-release
		return &pb.AcquireResponse{Allowed: true}, nil
	}}
	cfg := transport.DefaultGuardConfig()
	cfg.MaxInFlight = 2 // two requests
	cfg.RetryAfter = 70 * time.Millisecond
	addr, g, _ := serveGuarded(t, svc, cfg)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	// A request the Guard let through waits for release: bound the wait
	// for the two it must shed.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := pb.NewLeaseholdClient(cc).AcquireStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id := range uint64(4) {
		if err := st.Send(&pb.AcquireStreamRequest{Id: id + 1, Request: goodAcquire()}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var ol *transport.OverloadedError
		if err := transport.FromStatus(streamErr(m)); !errors.As(err, &ol) || ol.RetryAfter != cfg.RetryAfter {
			t.Errorf("answer to %d: %v; want overloaded, retry after %v", m.GetId(), err, cfg.RetryAfter)
		}
	}
	close(release)
	for range 2 {
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := streamErr(m); err != nil || !m.GetResponse().GetAllowed() {
			t.Errorf("answer to %d: %v, %v; want the service's", m.GetId(), m.GetResponse(), err)
		}
	}
	if shed := g.Stats().RequestsShed; shed != 2 {
		t.Errorf("Stats().RequestsShed = %d, want 2", shed)
	}
}

// TestAcquireStreamEndsOnAMessageThatDoesNotDecode: a message whose
// request is not valid protobuf ends the stream INVALID_ARGUMENT (its id
// cannot be trusted).
func TestAcquireStreamEndsOnAMessageThatDoesNotDecode(t *testing.T) {
	t.Parallel()
	cc := dialConn(t, okService(), transport.ServerOptions()...)
	st, err := cc.NewStream(t.Context(), &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		pb.Leasehold_AcquireStream_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	// Field 2 (request), length 3, then a truncated field inside it.
	bad := []byte{0x12, 0x03, 0x0a, 0x05, 0x01}
	if err := st.SendMsg(&bad); err != nil {
		t.Fatal(err)
	}
	var out []byte
	if err := st.RecvMsg(&out); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stream ended with %v; want INVALID_ARGUMENT", err)
	}
}
