package transport

import (
	"crypto/tls"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc/credentials"
)

// pipeListener accepts the server ends of in-memory pipes, one a call.
type pipeListener struct {
	net.Listener // nil: only Accept is called
	t            *testing.T
}

func (l pipeListener) Accept() (net.Conn, error) {
	server, client := net.Pipe()
	l.t.Cleanup(func() { client.Close(); server.Close() })
	return server, nil
}

// handshakeStub is transport credentials whose handshake succeeds at once
// on the connection it was given, after calling during, which stands for
// whatever else happens while a real handshake runs.
type handshakeStub struct {
	credentials.TransportCredentials // nil: only ServerHandshake is called
	during                           func()
}

func (s handshakeStub) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	s.during()
	return c, nil, nil
}

// newHandoverGuard returns a Guard of MaxConns 1 with TLS set (so that no
// HTTP/2 preface is read) and its Listener over pipes.
func newHandoverGuard(t *testing.T) (*Guard, net.Listener) {
	t.Helper()
	g, err := NewGuard(GuardConfig{TLS: &tls.Config{}, MaxConns: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return g, g.Listener(pipeListener{t: t})
}

func (g *Guard) stubCreds(during func()) credentials.TransportCredentials {
	return &handshakeCreds{TransportCredentials: handshakeStub{during: during}, g: g}
}

// TestDisplacedAfterItsHandshakeTakesNoConnSlot is the regression test for
// the ignored result of the handshake cap's Release: a connection closed
// for a newer one (displaced) between the end of its TLS handshake and
// its release from the handshake cap still took one of MaxConns, held
// until gRPC's first I/O on the closed connection failed. Here the
// displacement happens inside the stub's handshake; with MaxConns 1, the
// dead connection then shed the next client.
func TestDisplacedAfterItsHandshakeTakesNoConnSlot(t *testing.T) {
	g, ln := newHandoverGuard(t)
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	displace := func() {
		// Newer connections fill the handshake cap; the first one past it
		// closes the connection longest in its handshake: raw.
		for range 1000 {
			if g.Stats().Displaced > 0 {
				return
			}
			if _, err := ln.Accept(); err != nil {
				t.Fatal(err)
			}
		}
		t.Fatal("no connection displaced after 1000 accepted")
	}
	conn, _, err := g.stubCreds(displace).ServerHandshake(raw)
	if err == nil {
		conn.Close()
		t.Fatal("ServerHandshake of a displaced connection succeeded; want an error")
	}
	if n := g.Stats().Conns; n != 0 {
		t.Fatalf("Stats().Conns = %d after a displaced handshake; want 0", n)
	}

	next, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err = g.stubCreds(func() {}).ServerHandshake(next)
	if err != nil {
		t.Fatalf("ServerHandshake of the next client: %v; want it admitted to the free MaxConns slot", err)
	}
	conn.Close()
}

// TestConnSlotFreedWhenTheAcceptedConnIsClosed is the regression test for
// the latent leak beside the one above: the MaxConns slot belonged to the
// connection the credentials returned, but when setting up the transport
// fails after the handshake gRPC closes the connection it accepted
// instead (grpc-go v1.85 Server.newHTTP2Transport; NewServerTransport
// returns without closing the other on its settings-write errors). The
// slot must come back whichever of the two is closed, and once.
func TestConnSlotFreedWhenTheAcceptedConnIsClosed(t *testing.T) {
	for _, tc := range []struct {
		name          string
		acceptedFirst bool
	}{
		{"accepted one, as gRPC after a failed transport setup", true},
		{"returned one, as gRPC's transport", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, ln := newHandoverGuard(t)
			raw, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			conn, _, err := g.stubCreds(func() {}).ServerHandshake(raw)
			if err != nil {
				t.Fatal(err)
			}
			if st := g.Stats(); st.Conns != 1 || st.Handshakes != 0 {
				t.Fatalf("after the handshake, Stats() = %+v; want 1 connection and 0 handshakes", st)
			}
			first, second := conn, raw
			if tc.acceptedFirst {
				first, second = raw, conn
			}
			first.Close()
			if n := g.Stats().Conns; n != 0 {
				t.Errorf("closed: Stats().Conns = %d; want 0", n)
			}
			second.Close()
			if n := g.Stats().Conns; n != 0 {
				t.Errorf("closed the other too: Stats().Conns = %d; want 0", n)
			}
		})
	}
}
