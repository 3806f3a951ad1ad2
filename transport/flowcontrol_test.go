package transport_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/internal/h2ping"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestFixedWindowsSendNoPings: a server made with ServerOptions and a client
// dialed with DialOptions exchange calls with no PING frames either way.
// gRPC's dynamic window sizing sends one whenever data arrives and none of
// its own is outstanding, and the other end answers it: more writes,
// wake-ups and reads per call. With gRPC's defaults the same calls carry
// PINGs both ways, which shows that the count sees them.
func TestFixedWindowsSendNoPings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fixed bool
	}{{"ServerOptions and DialOptions", true}, {"gRPC's defaults", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				sopts []grpc.ServerOption
				dopts []grpc.DialOption
			)
			if tc.fixed {
				sopts, dopts = transport.ServerOptions(), transport.DialOptions()
			}
			svc := &fakeService{handle: func(context.Context, proto.Message) (proto.Message, error) {
				return &pb.StatusResponse{}, nil
			}}
			lis := bufconn.Listen(1 << 20)
			srv := grpc.NewServer(sopts...)
			transport.Register(srv, svc)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(lis) }()
			t.Cleanup(func() {
				srv.Stop()
				<-served
			})
			conns := make(chan *h2ping.Conn, 1)
			cc, err := grpc.NewClient("passthrough:///bufnet", append(dopts,
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
					c, err := lis.DialContext(ctx)
					if err != nil {
						return nil, err
					}
					w := h2ping.Wrap(c)
					select {
					case conns <- w:
					default:
						t.Error("dialed a second connection")
					}
					return w, nil
				}),
				grpc.WithTransportCredentials(insecure.NewCredentials()))...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			api := pb.NewLeaseholdClient(cc)
			for range 20 {
				if _, err := api.Status(t.Context(), &pb.StatusRequest{}); err != nil {
					t.Fatalf("Status: %v", err)
				}
			}
			conn := <-conns
			if tc.fixed {
				if sent, got := conn.Pings(); sent != 0 || got != 0 {
					t.Errorf("20 calls carried %d PINGs from the client and %d from the server; want none", sent, got)
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				sent, got := conn.Pings()
				if sent > 0 && got > 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("with gRPC's defaults, 20 calls carried %d PINGs from the client and %d from the server; want some each way", sent, got)
				}
				time.Sleep(time.Millisecond) // polling a condition with a deadline
			}
		})
	}
}
