package cluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// grpcNode is a one-node cluster served over real gRPC on loopback, as
// `leasehold serve` serves it (transport.ServerOptions, transport.Register).
type grpcNode struct {
	node   *Node
	conn   *grpc.ClientConn
	client pb.LeaseholdClient
}

// newGRPCNode starts a one-node cluster, waits until it leads and is ready,
// and serves it over gRPC until t ends.
func newGRPCNode(t testing.TB) *grpcNode {
	t.Helper()
	c := newTestCluster(t, 1)
	node := c.leader()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(transport.ServerOptions()...)
	transport.Register(srv, node)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the cluster's cleanup, registered earlier
		conn.Close()
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &grpcNode{node: node, conn: conn, client: pb.NewLeaseholdClient(conn)}
}

// logIndexes returns the node's last log index and commit index.
func (g *grpcNode) logIndexes() [2]uint64 {
	return [2]uint64{g.node.raft.LastIndex(), g.node.raft.CommitIndex()}
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
func (g *grpcNode) invokeRaw(ctx context.Context, method string, payload []byte) error {
	var reply []byte
	return g.conn.Invoke(ctx, method, &payload, &reply, grpc.ForceCodecV2(rawCodec{}))
}

// TestReleaseFloodAppendsNothing: a Release with 4,000,000 unused counts for
// an unknown lease was answered released:false and still appended a ~4 MB
// entry; ten of them grew raft.db by 50 MB on every node (issue 13). Now the
// request is refused before anything is proposed, whether it comes over
// gRPC (above MaxRequestBytes: refused unread; 9 counts: invalid) or straight
// to the Node, and the log does not move.
func TestReleaseFloodAppendsNothing(t *testing.T) {
	g := newGRPCNode(t)
	before := g.logIndexes()

	flood := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, 4_000_000)}
	ctx := t.Context()
	_, err := g.client.Release(ctx, flood)
	if code := status.Code(err); code != codes.ResourceExhausted {
		t.Errorf("Release of 4M unused over gRPC: err = %v, want ResourceExhausted (above MaxRequestBytes)", err)
	}
	nine := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, 9)}
	_, err = g.client.Release(ctx, nine)
	var ie *transport.InvalidError
	if !errors.As(transport.FromStatus(err), &ie) || ie.Field != "unused" {
		t.Errorf("Release of 9 unused over gRPC: err = %v, want INVALID_ARGUMENT for unused", err)
	}
	if _, err := g.node.Release(ctx, flood); !errors.As(err, &ie) || ie.Field != "unused" {
		t.Errorf("Node.Release of 4M unused: err = %v, want an *InvalidError for unused", err)
	}
	if after := g.logIndexes(); after != before {
		t.Errorf("log (last, commit index) went from %v to %v; an invalid request appended", before, after)
	}

	// The check is not blind: a valid Release of the unknown lease does
	// append, and answers released:false.
	resp, err := g.client.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: []int64{1}})
	if err != nil || resp.GetReleased() {
		t.Fatalf("valid Release of an unknown lease = %v, %v; want released false", resp, err)
	}
	if after := g.logIndexes(); after[0] != before[0]+1 {
		t.Errorf("a valid Release moved the log from %v to %v, want one entry", before, after)
	}
}

// TestUndecodableRequestAppendsNothing: a request that does not decode, or
// carries a key that is not UTF-8, was answered "Internal: grpc: failed to
// unmarshal" (issue 13); it is INVALID_ARGUMENT from a real node, and the
// log does not move.
func TestUndecodableRequestAppendsNothing(t *testing.T) {
	g := newGRPCNode(t)
	before := g.logIndexes()
	badKey := []byte{0x0a, 0x03, 'k', 0xff, 'y', 0x12, 0x04, 0x08, 0x01, 0x10, 0x01} // SetLimit{key: "k\xffy", limit: {...}}
	for _, tt := range []struct {
		method  string
		payload []byte
		field   string
	}{
		{pb.Leasehold_Acquire_FullMethodName, []byte{0x10, 0xff}, ""},
		{pb.Leasehold_SetLimit_FullMethodName, badKey, "key"},
	} {
		err := g.invokeRaw(t.Context(), tt.method, tt.payload)
		var ie *transport.InvalidError
		if !errors.As(transport.FromStatus(err), &ie) || ie.Field != tt.field {
			t.Errorf("%s %x: err = %v, want INVALID_ARGUMENT for %q", tt.method, tt.payload, err, tt.field)
		}
	}
	if after := g.logIndexes(); after != before {
		t.Errorf("log (last, commit index) went from %v to %v; an undecodable request appended", before, after)
	}
}

// callTimeout bounds one call of the fuzz target: an answer slower than
// this is a hang.
const callTimeout = 20 * time.Second

// TestReleaseReusingAnAcquiresSeqIsInvalid: a Release that reused an
// Acquire's (client_id, seq) was answered released:true for lease 12345,
// which never existed: the Acquire's remembered result (issue 13). The node
// answers INVALID_ARGUMENT naming seq, and the retry of the Acquire itself
// still gets its first answer.
func TestReleaseReusingAnAcquiresSeqIsInvalid(t *testing.T) {
	g := newGRPCNode(t)
	ctx := t.Context()
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: hourly(5)}); err != nil {
		t.Fatal(err)
	}
	acq := take("c", 7, "k", 1, time.Second)
	first, err := g.client.Acquire(ctx, acq)
	if err != nil || !first.GetAllowed() {
		t.Fatalf("acquire = %v, %v", first, err)
	}
	resp, err := g.client.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 7, LeaseId: 12345})
	var ie *transport.InvalidError
	if !errors.As(transport.FromStatus(err), &ie) || ie.Field != "seq" {
		t.Errorf("Release reusing the Acquire's seq = %v, %v; want INVALID_ARGUMENT for seq", resp, err)
	}
	again, err := g.client.Acquire(ctx, acq)
	if err != nil || again.GetLeaseId() != first.GetLeaseId() || again.GetLogTimeNs() != first.GetLogTimeNs() {
		t.Errorf("the Acquire retried = %v, %v; want its first answer %v", again, err, first)
	}
}
