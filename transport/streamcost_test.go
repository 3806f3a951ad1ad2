//go:build streamcost

// The cost of a unary call against one message each way on a bidirectional
// stream, over mutual TLS on loopback with this package's server and dial
// options and a Guard in front, the server in a child process so that each
// end's CPU is its own (transport/DESIGN.md, "A streamed Acquire: measured,
// not built"). It is behind a build tag so that `make test` does not run
// it:
//
//	go test -tags streamcost -run '^$' -bench StreamCost -benchtime 4s ./transport/
//
// Each benchmark reports ns/op, the client process's CPU per op
// (client-cpu-ns/op, from getrusage), the server process's CPU per op
// (server-cpu-ns/op, from /proc/PID/stat, 10 ms ticks: run for seconds) and
// allocations per op on each end.
package transport_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// costService is a service of its own with the two shapes of the same
// exchange (an AcquireRequest in, an AcquireResponse out) and a method
// that reports the server's allocations so far. It is not the Leasehold
// service: the proto is not changed for a measurement.
const costService = "leasehold.cost.v1.Cost"

// costAnswer is what the server answers every request with: a central
// decision's usual fields. A request with PacedAfterNs set is answered that
// long after it arrived, as a leader answers after a commit.
func costAnswer(req *pb.AcquireRequest) *pb.AcquireResponse {
	if d := time.Duration(req.GetPacedAfterNs()); d > 0 {
		time.Sleep(d) // a commit's time, not a synchronisation
	}
	return &pb.AcquireResponse{
		Allowed:   true,
		TtlNs:     req.GetTtlNs(),
		Items:     []*pb.ItemGrant{{Granted: 1, Remaining: 999_999_999}},
		LogTimeNs: 123_456_789_000,
	}
}

var costDesc = grpc.ServiceDesc{
	ServiceName: costService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Acquire", Handler: func(_ any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			req := new(pb.AcquireRequest)
			if err := dec(req); err != nil {
				return nil, err
			}
			h := func(_ context.Context, r any) (any, error) { return costAnswer(r.(*pb.AcquireRequest)), nil }
			if in == nil {
				return h(ctx, req)
			}
			return in(ctx, req, &grpc.UnaryServerInfo{FullMethod: "/" + costService + "/Acquire"}, h)
		}},
		{MethodName: "Mallocs", Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(new(pb.StatusRequest)); err != nil {
				return nil, err
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return &pb.AcquireResponse{LeaseId: ms.Mallocs}, nil
		}},
	},
	Streams: []grpc.StreamDesc{{
		StreamName: "AcquireStream", ServerStreams: true, ClientStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			for {
				req := new(pb.AcquireRequest)
				if err := ss.RecvMsg(req); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := ss.SendMsg(costAnswer(req)); err != nil {
					return err
				}
			}
		},
	}},
}

// TestStreamCostServer is the child process's body: it serves costDesc
// behind a Guard with the certificate files named in its environment,
// prints its address, and serves until its standard input closes.
func TestStreamCostServer(t *testing.T) {
	cert := os.Getenv("STREAMCOST_CERT")
	if cert == "" {
		t.Skip("the child process of BenchmarkStreamCost")
	}
	src, err := pki.NewSource(cert, os.Getenv("STREAMCOST_KEY"), os.Getenv("STREAMCOST_CA"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = src.ServerConfig(nil)
	cfg.Logger = slog.New(slog.DiscardHandler)
	g, err := transport.NewGuard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(transport.ServerOptions(), g.ServerOptions()...)...)
	srv.RegisterService(&costDesc, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(g.Listener(lis)) }()
	fmt.Println("ADDR", lis.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	srv.Stop()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// costServer is the child process serving costDesc.
type costServer struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addr  string
}

func startCostServer(b *testing.B, d *pkitest.Dir) *costServer {
	b.Helper()
	f := d.IssueHosts(pkitest.Node("n1"), nil)
	cmd := exec.Command(os.Args[0], "-test.run=^TestStreamCostServer$", "-test.v")
	cmd.Env = append(os.Environ(), "STREAMCOST_CERT="+f.Cert, "STREAMCOST_KEY="+f.Key, "STREAMCOST_CA="+f.CA)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &costServer{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		_ = s.stdin.Close()
		_ = s.cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			s.addr = a
			break
		}
	}
	if s.addr == "" {
		b.Fatalf("the server process printed no address: %v", sc.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }() // the child's -test.v lines
	return s
}

// cpu is the server process's user+system CPU so far (10 ms ticks).
func (s *costServer) cpu(b *testing.B) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (s *costServer) mallocs(b *testing.B, cc *grpc.ClientConn) uint64 {
	var out pb.AcquireResponse
	if err := cc.Invoke(context.Background(), "/"+costService+"/Mallocs", &pb.StatusRequest{}, &out); err != nil {
		b.Fatal(err)
	}
	return out.GetLeaseId()
}

func BenchmarkStreamCost(b *testing.B) {
	d := pkitest.New(b)
	srv := startCostServer(b, d)
	creds := credentials.NewTLS(d.Source(pkitest.Operator("bench")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
	req := &pb.AcquireRequest{
		ClientId: []byte("0123456789abcdef"), Seq: 1, AckedBelow: 1,
		Items: []*pb.AcquireItem{{Key: "bench:hot", Count: 1, Limit: &pb.Limit{
			Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1_000_000_000, PeriodNs: int64(time.Second), Burst: 1_000_000_000,
		}}},
	}
	commit := &pb.AcquireRequest{
		ClientId: req.ClientId, Seq: req.Seq, AckedBelow: req.AckedBelow, Items: req.Items,
		PacedAfterNs: int64(time.Millisecond),
	}
	type variant struct {
		callers int
		req     *pb.AcquireRequest
		rounds  bool // the callers ask together, round after round
	}
	for _, shape := range []string{"unary", "stream"} {
		for _, v := range []variant{{1, req, false}, {8, req, false}, {1, commit, false}, {8, commit, true}} {
			callers, req := v.callers, v.req
			name := fmt.Sprintf("%s/callers=%d", shape, callers)
			if v.req == commit {
				name += "/answer-after=1ms"
			}
			if v.rounds {
				name += "/in-rounds"
			}
			b.Run(name, func(b *testing.B) {
				conns := make([]*grpc.ClientConn, callers)
				for i := range conns {
					cc, err := grpc.NewClient(srv.addr, append(transport.DialOptions(), grpc.WithTransportCredentials(creds))...)
					if err != nil {
						b.Fatal(err)
					}
					defer cc.Close()
					conns[i] = cc
				}
				// Each caller's exchange; the first call of each (and
				// the stream's opening) happens before the timer starts.
				calls := make([]func() error, callers)
				for i, cc := range conns {
					if shape == "unary" {
						calls[i] = func() error {
							return cc.Invoke(context.Background(), "/"+costService+"/Acquire", req, new(pb.AcquireResponse))
						}
					} else {
						ctx, cancel := context.WithCancel(context.Background())
						defer cancel()
						st, err := cc.NewStream(ctx, &costDesc.Streams[0], "/"+costService+"/AcquireStream")
						if err != nil {
							b.Fatal(err)
						}
						calls[i] = func() error {
							if err := st.SendMsg(req); err != nil {
								return err
							}
							return st.RecvMsg(new(pb.AcquireResponse))
						}
					}
					if err := calls[i](); err != nil {
						b.Fatal(err)
					}
				}
				m0 := srv.mallocs(b, conns[0])
				s0, c0 := srv.cpu(b), selfCPU()
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				errs := make(chan error, callers)
				// ops is the calls made: b.N, or in rounds b.N rounded up
				// to whole rounds (ns/op, which the testing package takes
				// from b.N, is off by less than a round).
				ops := b.N
				if v.rounds {
					// All callers ask at once, and the next round starts
					// when every answer is in, as callers sharing one
					// Raft entry do.
					n := (b.N + callers - 1) / callers
					start := make([]chan struct{}, callers)
					done := make(chan error, callers)
					for i := range callers {
						start[i] = make(chan struct{}, 1)
						wg.Go(func() {
							for range start[i] {
								done <- calls[i]()
							}
						})
					}
					for range n {
						for i := range callers {
							start[i] <- struct{}{}
						}
						for range callers {
							if err := <-done; err != nil {
								errs <- err
							}
						}
					}
					for i := range callers {
						close(start[i])
					}
					ops = n * callers
				}
				for i := range callers {
					if v.rounds {
						break
					}
					n := b.N / callers
					if i < b.N%callers {
						n++
					}
					wg.Go(func() {
						for range n {
							if err := calls[i](); err != nil {
								errs <- err
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				s1, c1 := srv.cpu(b), selfCPU()
				m1 := srv.mallocs(b, conns[0])
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				b.ReportMetric(float64(c1-c0)/float64(ops), "client-cpu-ns/op")
				b.ReportMetric(float64(s1-s0)/float64(ops), "server-cpu-ns/op")
				b.ReportMetric(float64(m1-m0-1)/float64(ops), "server-allocs/op") // less the Mallocs call's own
			})
		}
	}
}
