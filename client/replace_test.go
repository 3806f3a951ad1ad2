package client_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/client"
)

// flakyDialer reaches the fake's nodes, except the ones marked down, whose
// dials fail as a dead process's do; it counts every dial to each node.
type flakyDialer struct {
	f  *fakeCluster
	mu struct {
		sync.Mutex
		down  map[int]bool
		dials map[int]int
	}
}

func newFlakyDialer(f *fakeCluster, down ...int) *flakyDialer {
	d := &flakyDialer{f: f}
	d.mu.down, d.mu.dials = make(map[int]bool), make(map[int]int)
	for _, i := range down {
		d.mu.down[i] = true
	}
	return d
}

func (d *flakyDialer) option() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		for i, a := range d.f.addrs() {
			if a != addr {
				continue
			}
			d.mu.Lock()
			d.mu.dials[i]++
			down := d.mu.down[i]
			d.mu.Unlock()
			if down {
				return nil, fmt.Errorf("dial %s: connection refused", addr)
			}
			return d.f.nodes[i].lis.DialContext(ctx)
		}
		return nil, fmt.Errorf("fake: no node at %s", addr)
	})
}

func (d *flakyDialer) set(i int, down bool) {
	d.mu.Lock()
	d.mu.down[i] = down
	d.mu.Unlock()
}

func (d *flakyDialer) dials(i int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.dials[i]
}

// TestClientsCutOffAfterMemberReplace is the chaos run's replaced leader:
// the client lists every node's address, the replacement's too, which
// served nothing since Dial (a spare not yet started), so gRPC's
// connection to it failed again and again and backs off, up to 2 minutes
// between attempts. The old leader dies and the replacement, now up,
// leads: the follower left names it. Before the fix, every attempt to it
// failed at once with the stale connection error until gRPC's backoff
// timer fired, seconds to a minute later, and the client was cut off
// though the cluster served. Now an attempt to an endpoint whose
// connection backs off makes it connect at once, and the client is
// served within the SDK's own retry backoff.
func TestClientsCutOffAfterMemberReplace(t *testing.T) {
	for _, byAddr := range []bool{false, true} {
		t.Run(fmt.Sprintf("leader address named %v", byAddr), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 3)
				const old, replacement = 0, 2
				d := newFlakyDialer(f, replacement)
				f.set(func(f *fakeCluster) { f.mu.leaderAddr = byAddr })
				c := f.dial(t, client.WithDialOptions(d.option()))
				l := c.Limiter("k", client.Limit{Rate: 1, Per: time.Second, Burst: 2}) // decided centrally
				l.Allow()

				// The replacement's connection has failed 6 times: gRPC
				// waits 1.6^5 s ±20%, at least 8.4 s, before the 7th.
				for d.dials(replacement) < 6 {
					time.Sleep(100 * time.Millisecond)
				}
				d.set(old, true)
				f.nodes[old].srv.Stop() // the old leader dies with its connections
				d.set(replacement, false)
				f.set(func(f *fakeCluster) { f.mu.leader = replacement })

				t0 := time.Now()
				before := perNode(f)[replacement]
				for perNode(f)[replacement] == before && time.Since(t0) < time.Minute {
					l.Allow()
					time.Sleep(10 * time.Millisecond)
				}
				// Bound: a retry after an unknown outcome waits at most
				// the SDK's 1s backoff; a connection on the fake's
				// in-memory pipes takes no time; a few rounds through
				// three endpoints.
				took := time.Since(t0)
				if took > 3*time.Second {
					t.Errorf("the replacement leader served the client %v after it was up, want within 3s (dials to it: %d)", took, d.dials(replacement))
				}
				t.Logf("served by the replacement %v after it was up", took)
			})
		})
	}
}
