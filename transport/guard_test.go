package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// okService answers every valid request with an empty success.
func okService() *fakeService {
	return &fakeService{handle: func(_ context.Context, req proto.Message) (proto.Message, error) {
		switch req.(type) {
		case *pb.AcquireRequest:
			return &pb.AcquireResponse{Allowed: true}, nil
		case *pb.ReleaseRequest:
			return &pb.ReleaseResponse{}, nil
		case *pb.SetLimitRequest:
			return &pb.SetLimitResponse{}, nil
		case *pb.GetLimitRequest:
			return &pb.GetLimitResponse{}, nil
		case *pb.DeleteLimitRequest:
			return &pb.DeleteLimitResponse{}, nil
		case *pb.StatusRequest:
			return &pb.StatusResponse{}, nil
		case *pb.ChargeRequest:
			return &pb.ChargeResponse{}, nil
		case *pb.ExtendRequest:
			return &pb.ExtendResponse{}, nil
		case *pb.RestrictRequest:
			return &pb.RestrictResponse{}, nil
		case *pb.ListLimitsRequest:
			return &pb.ListLimitsResponse{}, nil
		case *pb.DeleteLimitsRequest:
			return &pb.DeleteLimitsResponse{}, nil
		}
		return nil, errors.New("unexpected request")
	}}
}

// serveGuarded serves svc on a loopback port behind a Guard of cfg (its
// logs go to the returned buffer) and returns the address.
func serveGuarded(t *testing.T, svc transport.Service, cfg transport.GuardConfig) (string, *transport.Guard, *testlog.Buffer) {
	t.Helper()
	logs := &testlog.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	g, err := transport.NewGuard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(g.ServerOptions()...)
	transport.Register(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(g.Listener(lis)) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String(), g, logs
}

// dialTLS returns a client for addr that presents src's certificate.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) pb.LeaseholdClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewLeaseholdClient(cc)
}

func TestMethodRoles(t *testing.T) {
	for method, want := range map[string]pki.Role{
		pb.Leasehold_Acquire_FullMethodName:       pki.RoleClient,
		pb.Leasehold_AcquireStream_FullMethodName: pki.RoleClient,
		pb.Leasehold_Release_FullMethodName:       pki.RoleClient,
		pb.Leasehold_GetLimit_FullMethodName:      pki.RoleClient,
		pb.Leasehold_Status_FullMethodName:        pki.RoleClient,
		pb.Leasehold_Charge_FullMethodName:        pki.RoleClient,
		pb.Leasehold_Extend_FullMethodName:        pki.RoleClient,
		pb.Leasehold_Restrict_FullMethodName:      pki.RoleClient,
		pb.Leasehold_SetLimit_FullMethodName:      pki.RoleOperator,
		pb.Leasehold_DeleteLimit_FullMethodName:   pki.RoleOperator,
		pb.Leasehold_ListLimits_FullMethodName:    pki.RoleOperator, // it names every key
		pb.Leasehold_DeleteLimits_FullMethodName:  pki.RoleOperator,
		"/leasehold.v1.Leasehold/AddMember":       pki.RoleOperator, // future RPCs need an operator
	} {
		if got := transport.MethodRole(method); got != want {
			t.Errorf("MethodRole(%s) = %v; want %v", method, got, want)
		}
	}
}

// TestRolesOnTheClientAPI: a client certificate may acquire, release and
// read, and gets PERMISSION_DENIED on SetLimit, DeleteLimit, ListLimits
// (it names every key) and DeleteLimits without the
// service being called, each denial logged with who and what; an operator's
// and a node's certificates may call everything.
func TestRolesOnTheClientAPI(t *testing.T) {
	d := pkitest.New(t)
	node := d.Source(pkitest.Node("n1"))
	svc := okService()
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = node.ServerConfig(nil)
	addr, g, logs := serveGuarded(t, svc, cfg)

	for _, tc := range []struct {
		id     pki.Identity
		denied map[string]bool
	}{
		{pkitest.Client("app"), map[string]bool{"SetLimit": true, "DeleteLimit": true, "ListLimits": true, "DeleteLimits": true}},
		{pkitest.Operator("alice"), nil},
		{pkitest.Node("n2"), nil},
	} {
		t.Run(tc.id.String(), func(t *testing.T) {
			c := dialTLS(t, addr, d.Source(tc.id).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
			for _, r := range validRPCs() {
				before := svc.numCalls()
				_, err := r.call(t.Context(), c)
				if tc.denied[r.name] {
					if code := status.Code(err); code != codes.PermissionDenied {
						t.Errorf("%s: %v; want PERMISSION_DENIED", r.name, err)
					}
					if !errors.Is(transport.FromStatus(err), transport.ErrPermissionDenied) {
						t.Errorf("%s: FromStatus(%v) does not match ErrPermissionDenied", r.name, err)
					}
					if svc.numCalls() != before {
						t.Errorf("%s: a denied call reached the service", r.name)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v; want success", r.name, err)
				}
			}
		})
	}
	if got := g.Stats().Denied; got != 4 {
		t.Errorf("Stats().Denied = %d; want 4", got)
	}
	for _, m := range []string{"SetLimit", "DeleteLimit", "ListLimits", "DeleteLimits"} {
		if !strings.Contains(logs.String(), `msg="permission denied" who=client/app method=`+m+" needs=operator") {
			t.Errorf("no denial of %s logged with who and what:\n%s", m, logs.String())
		}
	}
}

// TestClientAPIRefusesWithoutCertificate: no certificate, a certificate of
// another CA, or TLS 1.1 never reach the service; without TLS on the
// client, neither.
func TestClientAPIRefusesWithoutCertificate(t *testing.T) {
	d := pkitest.New(t)
	svc := okService()
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = d.Source(pkitest.Node("n1")).ServerConfig(nil)
	addr, _, _ := serveGuarded(t, svc, cfg)

	app := d.Source(pkitest.Client("app")).ClientConfig(true, nil)
	noCert := app.Clone()
	noCert.GetClientCertificate = nil
	tls11 := app.Clone()
	tls11.MinVersion, tls11.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	for name, creds := range map[string]credentials.TransportCredentials{
		"no certificate":  credentials.NewTLS(noCert),
		"another CA":      credentials.NewTLS(pkitest.New(t).Source(pkitest.Operator("x")).ClientConfig(false, nil)),
		"TLS 1.1":         credentials.NewTLS(tls11),
		"plain text gRPC": insecure.NewCredentials(),
	} {
		t.Run(name, func(t *testing.T) {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err = pb.NewLeaseholdClient(cc).Status(ctx, &pb.StatusRequest{})
			if err == nil {
				t.Fatal("Status succeeded")
			}
		})
	}
	if n := svc.numCalls(); n != 0 {
		t.Errorf("the service was called %d times", n)
	}
}

// TestInsecureGuardTreatsEveryCallerAsOperator: without TLS, SetLimit is
// allowed (the insecure mode is for local play).
func TestInsecureGuardTreatsEveryCallerAsOperator(t *testing.T) {
	addr, _, _ := serveGuarded(t, okService(), transport.DefaultGuardConfig())
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, r := range validRPCs() {
		if _, err := r.call(t.Context(), pb.NewLeaseholdClient(cc)); err != nil {
			t.Errorf("%s: %v", r.name, err)
		}
	}
}

// TestOverload2000ConnectionsAtLowFDLimitAreShedLoggedAndCounted is the
// regression test for a node that, with 2000 connections and 1024 file
// descriptors, failed 1986 calls ("error reading server preface",
// DeadlineExceeded) and logged nothing. Scaled down: more RPCs than
// MaxInFlight, then more connections than MaxConns, against an in-process
// server. Every RPC beyond the cap is answered at once with
// RESOURCE_EXHAUSTED and the retry hint, every connection beyond the cap is
// closed at once, and both are logged and counted.
func TestOverload2000ConnectionsAtLowFDLimitAreShedLoggedAndCounted(t *testing.T) {
	const (
		maxConns    = 50
		maxInFlight = 16
		calls       = 200
		conns       = 200
	)
	gate := make(chan struct{})
	var blocked atomic.Int64
	svc := &fakeService{handle: func(ctx context.Context, req proto.Message) (proto.Message, error) {
		blocked.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return &pb.AcquireResponse{Allowed: true}, nil
	}}
	cfg := transport.GuardConfig{MaxConns: maxConns, MaxInFlight: maxInFlight, RetryAfter: 250 * time.Millisecond,
		HandshakeTimeout: time.Minute}
	addr, g, logs := serveGuarded(t, svc, cfg)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewLeaseholdClient(cc)

	// RPCs: maxInFlight block in the service, the rest are shed.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make(chan error, calls)
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			_, err := c.Acquire(ctx, goodAcquire())
			errs <- err
		})
	}
	shed := 0
	for shed < calls-maxInFlight {
		var err error
		select {
		case err = <-errs:
		case <-ctx.Done():
			t.Fatalf("only %d of %d calls over the cap came back", shed, calls-maxInFlight)
		}
		var oe *transport.OverloadedError
		if status.Code(err) != codes.ResourceExhausted || !errors.As(transport.FromStatus(err), &oe) || oe.RetryAfter != 250*time.Millisecond {
			t.Fatalf("a call over the cap got %v; want RESOURCE_EXHAUSTED with a 250ms retry hint", err)
		}
		shed++
	}
	if n := blocked.Load(); n != maxInFlight {
		t.Errorf("%d calls reached the service; want %d", n, maxInFlight)
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a call under the cap failed: %v", err)
		}
	}
	if got := g.Stats().RequestsShed; got != calls-maxInFlight {
		t.Errorf("Stats().RequestsShed = %d; want %d", got, calls-maxInFlight)
	}
	if !strings.Contains(logs.String(), `msg="overloaded: shed a request" method=Acquire`) {
		t.Errorf("no shed request logged:\n%s", logs.String())
	}
	if n := strings.Count(logs.String(), "shed a request"); n > 10 {
		t.Errorf("%d lines for %d shed requests; the log is not rate-limited", n, shed)
	}

	// Connections: the gRPC client holds one; maxConns-1 more finish their
	// handshake (without TLS, the HTTP/2 preface) and are held, waiting
	// for settings that never come; the rest are closed as they finish it.
	// One at a time, so that none is closed for being in its handshake.
	wantShed := uint64(conns - (maxConns - 1))
	var closed, held int
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		// A held connection gets the server's HTTP/2 settings; a shed one
		// is closed.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		switch _, err := c.Read(make([]byte, 1)); {
		case err == nil:
			held++
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatal("a connection past its handshake neither held nor closed")
		default:
			closed++
		}
	}
	if closed != int(wantShed) || held != maxConns-1 {
		t.Errorf("%d connections closed at once and %d held; want %d and %d", closed, held, wantShed, maxConns-1)
	}
	// A shed connection is closed, then counted.
	waitFor(t, "the last shed connection to be counted", func() bool { return g.Stats().ConnsShed >= wantShed })
	if got := g.Stats(); got.ConnsShed != wantShed || got.Conns != maxConns {
		t.Errorf("Stats() = %+v; want %d shed and %d open", got, wantShed, maxConns)
	}
	if !strings.Contains(logs.String(), `msg="overloaded: closed a new connection"`) {
		t.Errorf("no shed connection logged:\n%s", logs.String())
	}
}

func TestGuardConfigValidateReportsEveryProblem(t *testing.T) {
	err := transport.GuardConfig{MaxConns: -1, MaxInFlight: -1, RetryAfter: time.Microsecond, HandshakeTimeout: -1}.Validate()
	for _, want := range []string{"MaxConns", "MaxInFlight", "RetryAfter", "HandshakeTimeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to name %s", err, want)
		}
	}
	if err := (transport.GuardConfig{}).Validate(); err != nil {
		t.Errorf("zero GuardConfig: %v", err)
	}
}

// BenchmarkGuardedRPC is one Status call over loopback through a Guard,
// with mutual TLS and without, on one connection made before the clock
// starts: what TLS costs a request once connected (the handshake is paid
// once per connection). parallel runs GOMAXPROCS·16 callers at once.
//
//	go test -run '^$' -bench BenchmarkGuardedRPC -count 6 ./transport/
func BenchmarkGuardedRPC(b *testing.B) {
	for _, on := range []bool{false, true} {
		for _, parallel := range []bool{false, true} {
			b.Run(fmt.Sprintf("tls=%v/parallel=%v", on, parallel), func(b *testing.B) {
				cfg := transport.DefaultGuardConfig()
				creds := insecure.NewCredentials()
				if on {
					d := pkitest.New(b)
					cfg.TLS = d.Source(pkitest.Node("n1")).ServerConfig(nil)
					creds = credentials.NewTLS(d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
				}
				addr := serveGuardedB(b, okService(), cfg)
				cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
				if err != nil {
					b.Fatal(err)
				}
				defer cc.Close()
				c := pb.NewLeaseholdClient(cc)
				if _, err := c.Status(b.Context(), &pb.StatusRequest{}); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				if !parallel {
					for b.Loop() {
						if _, err := c.Status(b.Context(), &pb.StatusRequest{}); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(16)
				b.RunParallel(func(p *testing.PB) {
					for p.Next() {
						if _, err := c.Status(context.Background(), &pb.StatusRequest{}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// serveGuardedB is serveGuarded for a benchmark, logging nowhere.
func serveGuardedB(b *testing.B, svc transport.Service, cfg transport.GuardConfig) string {
	cfg.Logger = slog.New(slog.DiscardHandler)
	g, err := transport.NewGuard(cfg)
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(g.ServerOptions()...)
	transport.Register(srv, svc)
	done := make(chan struct{})
	go func() { srv.Serve(g.Listener(lis)); close(done) }()
	b.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}
