package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

func TestMaxConnsForFDLimit(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{
		{0, 1024}, // unknown
		{64, minDefaultConns},
		{256, 96},
		{1024, 672},
		{1 << 20, maxDefaultConns},
	} {
		if got := maxConnsFor(tc.nofile); got != tc.want {
			t.Errorf("maxConnsFor(%d) = %d; want %d", tc.nofile, got, tc.want)
		}
	}
}

// TestMaxHandshakesFitsTheFDLimit: the handshake cap is MaxConns within a
// quarter of the descriptors after reservedFDs, and at least 16; with the
// limit unknown, MaxConns.
func TestMaxHandshakesFitsTheFDLimit(t *testing.T) {
	for _, tc := range []struct {
		maxConns int
		nofile   uint64
		want     int
	}{
		{4096, 1 << 20, 4096},
		{4096, 16000, 3824},
		{672, 1024, 80}, // the default MaxConns there: 672 + 80 + 16 (operators) + 64 (HTTP) + 64 (gossip) + 128 descriptors
		{672, 600, minHandshakes},
		{50, 1024, 50},
		{16, 100, 16},
		{1, 1 << 20, minHandshakes},
		{1024, 0, 1024},
	} {
		if got := maxHandshakes(tc.maxConns, tc.nofile); got != tc.want {
			t.Errorf("maxHandshakes(%d, %d) = %d; want %d", tc.maxConns, tc.nofile, got, tc.want)
		}
	}
}

// TestCertificateWithoutIdentityIsUnauthenticated: a verified certificate
// that names no Leasehold identity reaches the interceptor and is refused
// with UNAUTHENTICATED, before the handler.
func TestCertificateWithoutIdentityIsUnauthenticated(t *testing.T) {
	g, err := NewGuard(GuardConfig{TLS: &tls.Config{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for name, ctx := range map[string]context.Context{
		"no peer": context.Background(),
		"no TLS":  peer.NewContext(context.Background(), &peer.Peer{}),
		"no identity": peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{}}}}}}),
	} {
		called := false
		_, err := g.unary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: pb.Leasehold_Status_FullMethodName},
			func(context.Context, any) (any, error) { called = true; return nil, nil })
		if status.Code(err) != codes.Unauthenticated || called {
			t.Errorf("%s: err %v, handler called %v; want UNAUTHENTICATED before the handler", name, err, called)
		}
	}
	if got := g.Stats().Unauthenticated; got != 3 {
		t.Errorf("Stats().Unauthenticated = %d; want 3", got)
	}
}
