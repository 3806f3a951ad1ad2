package transport_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

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
