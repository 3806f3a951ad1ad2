package client_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/h2ping"
	"github.com/leasehold/leasehold/transport"
)

// TestClientConnectionsCarryNoPings: the SDK dials with
// transport.DialOptions, so its calls to a node (made with
// transport.ServerOptions, as `leasehold serve` makes it) carry no PING
// frames of gRPC's window sizing either way: each would be a write, a
// wake-up and a read more per call on both ends (transport's
// TestFixedWindowsSendNoPings shows the count seeing them with gRPC's
// defaults).
func TestClientConnectionsCarryNoPings(t *testing.T) {
	fake := newFake(t, 1)
	addr := serveOn(t, fake.nodes[0], transport.ServerOptions()...)
	var (
		mu    sync.Mutex
		conns []*h2ping.Conn
	)
	recording := grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", a)
		if err != nil {
			return nil, err
		}
		w := h2ping.Wrap(c)
		mu.Lock()
		conns = append(conns, w)
		mu.Unlock()
		return w, nil
	})
	c, err := client.Dial(t.Context(), []string{addr}, client.WithInsecure(), client.WithDialOptions(recording), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := c.Limiter("k", client.Limit{Rate: 1000, Per: time.Second, Burst: 1000})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for range 20 {
		if err := l.Wait(ctx); err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
	if st := c.Stats(); st.Admitted.Leased+st.Admitted.Central == 0 {
		t.Fatalf("admitted %+v; want answers from the node", st.Admitted)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) == 0 {
		t.Fatal("no connection dialed")
	}
	for i, w := range conns {
		if sent, got := w.Pings(); sent != 0 || got != 0 {
			t.Errorf("connection %d carried %d PINGs from the client and %d from the node; want none", i, sent, got)
		}
	}
}
