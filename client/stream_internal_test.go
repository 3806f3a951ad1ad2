package client

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// streamServer answers Acquires, unary or on AcquireStreams, and records
// what it was sent. stream, if set, serves the n-th AcquireStream (from 0)
// instead of the normal way; returning ok false serves it normally.
type streamServer struct {
	pb.UnimplementedLeaseholdServer
	stream func(n int, st grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) (err error, ok bool)

	mu      sync.Mutex
	unary   []uint64 // seqs of unary Acquires
	streams int      // AcquireStreams opened
	onStrm  []uint64 // seqs of Acquires on streams
}

func (s *streamServer) answer(req *pb.AcquireRequest) *pb.AcquireResponse {
	return &pb.AcquireResponse{Allowed: true, Items: []*pb.ItemGrant{{Granted: req.GetItems()[0].GetCount()}}, LogTimeNs: int64(req.GetSeq())}
}

func (s *streamServer) Acquire(_ context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	s.mu.Lock()
	s.unary = append(s.unary, req.GetSeq())
	s.mu.Unlock()
	return s.answer(req), nil
}

func (s *streamServer) AcquireStream(st grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) error {
	s.mu.Lock()
	n := s.streams
	s.streams++
	s.mu.Unlock()
	if s.stream != nil {
		if err, ok := s.stream(n, st); ok {
			return err
		}
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return nil
		}
		s.record(m)
		if err := st.Send(&pb.AcquireStreamResponse{Id: m.GetId(), Response: s.answer(m.GetRequest())}); err != nil {
			return err
		}
	}
}

func (s *streamServer) record(m *pb.AcquireStreamRequest) {
	s.mu.Lock()
	s.onStrm = append(s.onStrm, m.GetRequest().GetSeq())
	s.mu.Unlock()
}

func (s *streamServer) seen() (unary []uint64, streams int, onStream []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.unary...), s.streams, append([]uint64(nil), s.onStrm...)
}

// dialStreamServer serves srv over bufconn and returns a Client of it
// alone, closed when the test ends.
func dialStreamServer(t *testing.T, srv pb.LeaseholdServer, opts ...Option) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 16)
	gs := grpc.NewServer()
	pb.RegisterLeaseholdServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	c, err := Dial(t.Context(), []string{"127.0.0.1:7101"}, append([]Option{
		WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials())),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func centralAcquire(ctx context.Context, c *Client) (*pb.AcquireResponse, error) {
	resp, _, err := c.acquire(ctx, "k", nil, 1, 1, 0, pacing{})
	return resp, err
}

// TestAcquiresShareOneStream: a Client's Acquires go on one AcquireStream
// to the endpoint, not as unary calls, and are answered.
func TestAcquiresShareOneStream(t *testing.T) {
	srv := &streamServer{}
	c := dialStreamServer(t, srv)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5 {
				if resp, err := centralAcquire(t.Context(), c); err != nil || !resp.GetAllowed() {
					t.Errorf("acquire: %v, %v", resp, err)
				}
			}
		})
	}
	wg.Wait()
	unary, streams, onStream := srv.seen()
	if len(unary) != 0 || streams != 1 || len(onStream) != 40 {
		t.Errorf("%d unary Acquires, %d streams, %d Acquires on streams; want 0, 1, 40", len(unary), streams, len(onStream))
	}
}

// TestAcquireWithoutTheStreamIsUnary: a server that does not have
// AcquireStream (an older node) answers UNIMPLEMENTED; the request is
// sent again as a unary Acquire, and so is every later one.
func TestAcquireWithoutTheStreamIsUnary(t *testing.T) {
	srv := &streamServer{stream: func(int, grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) (error, bool) {
		return status.Error(codes.Unimplemented, "unknown method AcquireStream"), true
	}}
	c := dialStreamServer(t, srv)
	for range 3 {
		if resp, err := centralAcquire(t.Context(), c); err != nil || !resp.GetAllowed() {
			t.Fatalf("acquire: %v, %v", resp, err)
		}
	}
	unary, streams, _ := srv.seen()
	if len(unary) != 3 || streams != 1 {
		t.Errorf("%d unary Acquires after %d streams; want 3 after 1", len(unary), streams)
	}
}

// TestBrokenStreamRetriesTheSameSeq: a stream that breaks after taking a
// request leaves its outcome unknown; the request is sent again with the
// same seq, on a new stream, as a unary call is retried.
func TestBrokenStreamRetriesTheSameSeq(t *testing.T) {
	srv := &streamServer{}
	srv.stream = func(n int, st grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) (error, bool) {
		if n > 0 {
			return nil, false
		}
		m, err := st.Recv()
		if err != nil {
			return err, true
		}
		srv.record(m)
		return status.Error(codes.Unavailable, "connection lost"), true
	}
	c := dialStreamServer(t, srv)
	resp, err := centralAcquire(t.Context(), c)
	if err != nil || !resp.GetAllowed() {
		t.Fatalf("acquire: %v, %v", resp, err)
	}
	unary, streams, onStream := srv.seen()
	if len(unary) != 0 || streams != 2 || len(onStream) != 2 || onStream[0] != onStream[1] {
		t.Errorf("%d unary, %d streams, seqs on streams %v; want 0, 2, the same seq twice", len(unary), streams, onStream)
	}
}

// TestStreamedAcquireKeepsItsDeadline: a request whose answer does not
// come ends at its deadline, as a unary call does, with the deadline's
// error; the server is told the deadline; and the request still holds
// its place in the stream's bound until the stream ends.
func TestStreamedAcquireKeepsItsDeadline(t *testing.T) {
	got := make(chan *pb.AcquireStreamRequest, 1)
	srv := &streamServer{stream: func(_ int, st grpc.BidiStreamingServer[pb.AcquireStreamRequest, pb.AcquireStreamResponse]) (error, bool) {
		m, err := st.Recv()
		if err != nil {
			return err, true
		}
		got <- m
		<-st.Context().Done() // never answers
		return nil, true
	}}
	c := dialStreamServer(t, srv, WithRequestTimeout(time.Hour))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := centralAcquire(ctx, c)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, transport.ErrUnknownOutcome) {
		t.Errorf("acquire: %v; want the deadline's error, an unknown outcome", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("acquire returned after %v; its deadline was 50ms", waited)
	}
	m := <-got
	if d := time.Duration(m.GetTimeoutNs()); d <= 0 || d > 50*time.Millisecond {
		t.Errorf("timeout_ns = %v; want the request's deadline, at most 50ms", d)
	}
	if n := len(c.eps.list[0].api.(*streamAPI).slots); n != 1 {
		t.Errorf("%d requests hold a place in the stream's bound; want 1 (unanswered, the stream open)", n)
	}
}

// TestStreamOpeningKeepsTheDeadline: opening the stream to an endpoint
// whose connection does not come up waits no longer than the request's
// deadline, as a unary call does (the stream itself would live on).
func TestStreamOpeningKeepsTheDeadline(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	c, err := Dial(t.Context(), []string{"127.0.0.1:7101"},
		WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			select { // a connection that never comes up
			case <-hang:
			case <-ctx.Done():
			}
			return nil, errors.New("no connection")
		}), grpc.WithTransportCredentials(insecure.NewCredentials())),
		WithRequestTimeout(100*time.Millisecond)) // Dial's Status

	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := centralAcquire(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire: %v; want the deadline's error", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("acquire returned after %v; its deadline was 50ms", waited)
	}
}
