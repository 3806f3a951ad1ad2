package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// serveOn serves svc on a loopback port with opts until the test ends and
// returns the address.
func serveOn(t *testing.T, svc transport.Service, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	transport.Register(srv, svc)
	done := make(chan struct{})
	go func() { srv.Serve(lis); close(done) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// serveTLS serves the fake's leader behind a Guard with node n1's
// certificate of d's CA.
func serveTLS(t *testing.T, d *pkitest.Dir, svc transport.Service) string {
	t.Helper()
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = d.Source(pkitest.Node("n1")).ServerConfig(nil)
	cfg.Logger = slog.New(slog.DiscardHandler)
	g, err := transport.NewGuard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, svc, g.ServerOptions()...)
}

func quietLogger() client.Option {
	return client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestDialChecksSecurityOptions(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Client("app"))
	for _, tc := range []struct {
		name string
		opts []client.Option
		want string
	}{
		{"two", []client.Option{client.WithTLS(f.Cert, f.Key, f.CA), client.WithInsecure()}, "at most one"},
		{"nil config", []client.Option{client.WithTLSConfig(nil)}, "nil config"},
		{"missing file name", []client.Option{client.WithTLS(f.Cert, "", f.CA)}, "must all be given"},
		{"missing file", []client.Option{client.WithTLS(f.Cert, f.Key, d.Path+"/nope.pem")}, "no such file"},
		{"key of another certificate", []client.Option{client.WithTLS(f.Cert, d.Issue(pkitest.Client("b")).Key, f.CA)}, "does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.Dial(t.Context(), []string{"127.0.0.1:7101"}, tc.opts...)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v; want %q", err, tc.want)
			}
		})
	}
}

// TestDialWithNoSecurityOptionSpokePlainText: Dial with none of WithTLS,
// WithTLSConfig and WithInsecure used to dial in plain text. It fails with
// ErrNoTransportSecurity, naming the three options, and nothing reaches the
// node, even with other dial options given; transport credentials passed
// through WithDialOptions count as the choice, and may not be given twice.
func TestDialWithNoSecurityOptionSpokePlainText(t *testing.T) {
	fake := newFake(t, 1)
	var mu sync.Mutex
	rpcs, dials := 0, 0
	addr := serveOn(t, fake.nodes[0], grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			mu.Lock()
			rpcs++
			mu.Unlock()
			return h(ctx, req)
		}))
	counting := grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, "tcp", a)
	})
	plain := grpc.WithTransportCredentials(insecure.NewCredentials())
	lim := client.Limit{Rate: 100, Per: time.Second, Burst: 100}

	for _, tc := range []struct {
		name string
		opts []client.Option
		want error  // nil: Dial succeeds and a Wait is served
		msg  string // in the error
	}{
		{"no option", nil, client.ErrNoTransportSecurity, "WithTLS(cert, key, ca) or WithTLSConfig"},
		{"dial options without credentials", []client.Option{client.WithDialOptions(counting)}, client.ErrNoTransportSecurity, "WithInsecure"},
		{"WithInsecure", []client.Option{client.WithInsecure(), client.WithDialOptions(counting)}, nil, ""},
		{"credentials in WithDialOptions", []client.Option{client.WithDialOptions(counting, plain)}, nil, ""},
		{"credentials twice", []client.Option{client.WithInsecure(), client.WithDialOptions(plain)}, errAny, "given twice"},
		{"WithTLS and credentials in WithDialOptions", []client.Option{client.WithTLSConfig(&tls.Config{}), client.WithDialOptions(plain)}, errAny, "given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			rpcs, dials = 0, 0
			mu.Unlock()
			c, err := client.Dial(t.Context(), []string{addr}, append(tc.opts, quietLogger())...)
			if tc.want != nil {
				if err == nil {
					c.Close()
					t.Fatal("Dial succeeded")
				}
				if tc.want != errAny && !errors.Is(err, tc.want) {
					t.Errorf("Dial: %v; want %v", err, tc.want)
				}
				if !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("Dial: %v; want it to say %q", err, tc.msg)
				}
				mu.Lock()
				defer mu.Unlock()
				if rpcs != 0 || dials != 0 {
					t.Errorf("refused Dial made %d connections and %d calls; want none", dials, rpcs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := c.Limiter("k-"+tc.name, lim).Wait(ctx); err != nil {
				t.Fatalf("Wait against a plain-text node: %v", err)
			}
		})
	}
}

// errAny stands for "some error" in a table of wanted errors.
var errAny = errors.New("any error")

// TestWithTLSLeasesFromATLSNode: a client certificate, or an operator's,
// leases tokens from a node that requires TLS; a plain-text client gets
// nothing (and, failing closed, admits nothing).
func TestWithTLSLeasesFromATLSNode(t *testing.T) {
	d := pkitest.New(t)
	fake := newFake(t, 1)
	addr := serveTLS(t, d, fake.nodes[0])
	lim := client.Limit{Rate: 100, Per: time.Second, Burst: 100}
	for _, id := range []pki.Identity{pkitest.Client("app"), pkitest.Operator("alice")} {
		t.Run(id.String(), func(t *testing.T) {
			f := d.Issue(id)
			c, err := client.Dial(t.Context(), []string{addr}, client.WithTLS(f.Cert, f.Key, f.CA), quietLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			l := client.LeasingForTest(c.Limiter("k-"+id.Name, lim))
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := l.Wait(ctx); err != nil {
				t.Fatalf("Wait over TLS: %v", err)
			}
			// Leased, normally. Central too is an answer over TLS: on a
			// starved machine (CI, once: this Wait took 7.8 s) the demand
			// estimate decays while the call waits, and the retry is
			// decided centrally. What TLS must never give is the failure
			// policy's answer.
			if s := l.State(); s != client.StateLeased && s != client.StateCentral {
				t.Fatalf("State() = %v; want leased (or central)", s)
			}
			if st := c.Stats(); st.Admitted.Fallback != 0 || st.Admitted.Leased+st.Admitted.Central == 0 {
				t.Fatalf("admitted %+v; want from the cluster, nothing by the failure policy", st.Admitted)
			}
		})
	}
	t.Run("plain text", func(t *testing.T) {
		c, err := client.Dial(t.Context(), []string{addr}, client.WithInsecure(), client.WithRequestTimeout(200*time.Millisecond), quietLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		l := c.Limiter("k-plain", lim)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := l.Wait(ctx); !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("Wait in plain text against a TLS node = %v; want ErrUnavailable", err)
		}
	})
}

// override serves the fake's node with its Acquire replaced.
type override struct {
	*fakeNode
	acquire func(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error)
}

func (o override) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return o.acquire(ctx, req)
}

// TestPermissionDeniedIsNotAnOutage: a key whose Acquire the cluster refuses
// with PERMISSION_DENIED admits nothing, even with FailOpen, and Wait
// returns an error matching transport.ErrPermissionDenied at once.
func TestPermissionDeniedIsNotAnOutage(t *testing.T) {
	fake := newFake(t, 1)
	var mu sync.Mutex
	calls := 0
	addr := serveOn(t, override{fake.nodes[0], func(context.Context, *pb.AcquireRequest) (*pb.AcquireResponse, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return nil, fmt.Errorf("%w: client/app may not call Acquire", transport.ErrPermissionDenied)
	}})
	c, err := client.Dial(t.Context(), []string{addr}, client.WithInsecure(), client.WithFailurePolicy(client.FailOpen), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second, Burst: 100})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, transport.ErrPermissionDenied) {
		t.Fatalf("Wait = %v; want ErrPermissionDenied", err)
	}
	for range 100 {
		if l.Allow() {
			t.Fatal("Allow = true on a key the cluster refuses; FailOpen must not apply to a refusal")
		}
	}
	if s := l.State(); s != client.StateInvalid {
		t.Errorf("State() = %v; want invalid", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("%d Acquires sent; a refusal is not retried", calls)
	}
}

// TestOverloadedIsRetriedAfterTheHint: an Acquire shed with a retry hint is
// sent again, with the same client id and seq, no sooner than the hint, and
// the Limiter gets its lease.
func TestOverloadedIsRetriedAfterTheHint(t *testing.T) {
	const hint = 50 * time.Millisecond
	fake := newFake(t, 1)
	var mu sync.Mutex
	var arrivals []time.Time
	var seqs []uint64
	addr := serveOn(t, override{fake.nodes[0], func(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		seqs = append(seqs, req.GetSeq())
		n := len(arrivals)
		mu.Unlock()
		if n <= 3 {
			return nil, &transport.OverloadedError{RetryAfter: hint}
		}
		return fake.nodes[0].Acquire(ctx, req)
	}})
	c, err := client.Dial(t.Context(), []string{addr}, client.WithInsecure(), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := c.Limiter("k", client.Limit{Rate: 100, Per: time.Second, Burst: 100})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := l.Wait(ctx); err != nil {
		t.Fatalf("Wait = %v; want a lease after the node stops shedding", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) < 4 {
		t.Fatalf("%d Acquires arrived; want 3 shed and one served", len(arrivals))
	}
	for i := 1; i < 4; i++ {
		if gap := arrivals[i].Sub(arrivals[i-1]); gap < hint {
			t.Errorf("retry %d came %v after the shed attempt; want at least the %v hint", i, gap, hint)
		}
		if seqs[i] != seqs[0] {
			t.Errorf("retry %d has seq %d; want the first attempt's %d", i, seqs[i], seqs[0])
		}
	}
}
