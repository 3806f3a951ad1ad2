package transport_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestIdleConnectionsDoNotLockOutClients is the regression test for the
// attack in which idle TCP connections, no certificate needed, filled
// every MaxConns slot of the client API until the handshake timeout, so
// that new clients (and SDK reconnects after a leader change) were closed
// at once: "overloaded: closed a new connection". Scaled down: 300 silent
// connections against MaxConns 64 and a handshake timeout of a minute,
// then a real client, which must connect and be answered at once. The
// flood displaces only connections in their handshake and never holds an
// authenticated slot. With TLS the handshake is TLS's; without, it is the
// HTTP/2 preface.
func TestIdleConnectionsDoNotLockOutClients(t *testing.T) {
	const (
		maxConns = 64
		flood    = 300
	)
	d := pkitest.New(t)
	for _, tc := range []struct {
		name   string
		server *transport.GuardConfig
		creds  credentials.TransportCredentials
	}{
		{"tls", &transport.GuardConfig{TLS: d.Source(pkitest.Node("n1")).ServerConfig(nil)},
			credentials.NewTLS(d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))},
		{"insecure", &transport.GuardConfig{}, insecure.NewCredentials()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := *tc.server
			cfg.MaxConns, cfg.HandshakeTimeout = maxConns, time.Minute
			addr, g, _ := serveGuarded(t, okService(), cfg)

			// The listener's accept queue is first in, first out: every
			// connection of the flood is accepted before the client's.
			for range flood {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				t.Cleanup(func() { c.Close() })
			}
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tc.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if _, err := pb.NewLeaseholdClient(cc).Status(ctx, &pb.StatusRequest{}); err != nil {
				t.Fatalf("Status after %d idle connections: %v; want an answer", flood, err)
			}
			// Each of the flood's connections was closed for a newer one or
			// is still in its handshake; none got past it.
			st := g.Stats()
			if st.Conns != 1 || st.Displaced == 0 || st.Displaced+uint64(st.Handshakes) != flood {
				t.Errorf("Stats() = %+v; want 1 connection, the client's, and the %d others displaced or in their handshake", st, flood)
			}
		})
	}
}

// TestHeldStreamsLeaveSlotsForOtherCallers is the regression test for the
// attack in which a client certificate opened 8300 AcquireStreams on one
// connection and held them idle: each held one of the MaxInFlight slots
// for its life, so every other caller's RPC was answered
// RESOURCE_EXHAUSTED "node overloaded". A stream takes a slot only for
// each request it carries; open streams are capped at MaxInFlight
// node-wide on their own (a review found 256 per connection the only
// bound once streams held no slot), the one past it refused.
func TestHeldStreamsLeaveSlotsForOtherCallers(t *testing.T) {
	const maxInFlight = 8
	d := pkitest.New(t)
	cfg := transport.GuardConfig{TLS: d.Source(pkitest.Node("n1")).ServerConfig(nil), MaxInFlight: maxInFlight}
	addr, _, _ := serveGuarded(t, okService(), cfg)
	app := d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode))

	holder := dialTLS(t, addr, app)
	open := func() error {
		st, err := holder.AcquireStream(t.Context())
		if err != nil {
			return err
		}
		// An answer on the stream: the server has opened it. A Send
		// after the server ended the stream (the one refused) returns
		// io.EOF; its status comes from Recv (CI saw the refusal as EOF
		// when the server's answer beat the Send).
		err = st.Send(&pb.AcquireStreamRequest{Id: 1, Request: goodAcquire()})
		var m *pb.AcquireStreamResponse
		if err == nil || errors.Is(err, io.EOF) {
			m, err = st.Recv()
		}
		if err == nil {
			err = streamErr(m)
		}
		return err
	}
	for i := range maxInFlight {
		if err := open(); err != nil {
			t.Fatalf("stream %d of %d held open (MaxInFlight %d): %v", i+1, maxInFlight, maxInFlight, err)
		}
	}
	if err := open(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream %d with %d open (MaxInFlight %d): %v; want RESOURCE_EXHAUSTED", maxInFlight+1, maxInFlight, maxInFlight, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := dialTLS(t, addr, app).Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("Status while %d streams are held open (MaxInFlight %d): %v", maxInFlight, maxInFlight, err)
	}
}

// TestStreamsPerConnectionAreCapped: one connection carries at most
// MaxStreamsPerConn calls at once; one more waits (gRPC's client holds it
// until a stream ends), and a stream that ends makes room for it.
func TestStreamsPerConnectionAreCapped(t *testing.T) {
	addr, _, _ := serveGuarded(t, okService(), transport.GuardConfig{})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewLeaseholdClient(cc)
	var streams []grpc.BidiStreamingClient[pb.AcquireStreamRequest, pb.AcquireStreamResponse]
	for i := range transport.MaxStreamsPerConn {
		st, err := c.AcquireStream(t.Context())
		if err == nil {
			err = st.Send(&pb.AcquireStreamRequest{Id: 1, Request: goodAcquire()})
		}
		if err == nil {
			_, err = st.Recv()
		}
		if err != nil {
			t.Fatalf("stream %d of %d: %v", i+1, transport.MaxStreamsPerConn, err)
		}
		streams = append(streams, st)
	}

	// One more: it must not be served while the others are open.
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if st, err := c.AcquireStream(ctx); err == nil {
		if err = st.Send(&pb.AcquireStreamRequest{Id: 1, Request: goodAcquire()}); err == nil {
			_, err = st.Recv()
		}
		if err == nil {
			t.Fatalf("stream %d of a connection served; the cap is %d", transport.MaxStreamsPerConn+1, transport.MaxStreamsPerConn)
		}
	}

	// One ends: the next is served.
	if err := streams[0].CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := streams[0].Recv(); err == nil {
		t.Fatal("a stream closed by the client answered again")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("Status once a stream ended: %v", err)
	}
}

// TestOperatorsConnectWhenClientsHoldEveryConnSlot is the regression test
// of a client certificate holding every MaxConns slot with idle
// connections (an attacker's pass: 4200 of them, and no new operator
// connection got in, so no operator could act on the node): an operator's
// or a node's connection that finds MaxConns full takes one of
// operatorConns beyond it; a client's is still shed.
func TestOperatorsConnectWhenClientsHoldEveryConnSlot(t *testing.T) {
	const maxConns = 2
	d := pkitest.New(t)
	cfg := transport.GuardConfig{TLS: d.Source(pkitest.Node("n1")).ServerConfig(nil), MaxConns: maxConns}
	addr, g, _ := serveGuarded(t, okService(), cfg)
	app := d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode))
	status := func(c pb.LeaseholdClient) error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := c.Status(ctx, &pb.StatusRequest{})
		return err
	}
	for i := range maxConns {
		if err := status(dialTLS(t, addr, app)); err != nil {
			t.Fatalf("client connection %d of MaxConns %d: %v", i+1, maxConns, err)
		}
	}
	if err := status(dialTLS(t, addr, app)); err == nil {
		t.Errorf("a client connection past MaxConns was answered; want it shed")
	}
	for _, id := range []pki.Identity{pkitest.Operator("ops"), pkitest.Node("n2")} {
		c := dialTLS(t, addr, d.Source(id).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
		if err := status(c); err != nil {
			t.Errorf("%v with every MaxConns slot held by clients: %v; want an answer", id, err)
		}
	}
	if st := g.Stats(); st.Conns != maxConns+2 {
		t.Errorf("Stats().Conns = %d; want the %d clients' and the 2 operators'", st.Conns, maxConns)
	}
}
