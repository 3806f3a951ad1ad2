package web

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
)

// probe sends one GET /healthz on c, keeping it open, and returns the
// status code, or an error if the server closed the connection instead.
func probe(c net.Conn) (int, error) { return probePath(c, "/healthz", 5*time.Second) }

// probeReady is probe for /readyz.
func probeReady(c net.Conn) (int, error) { return probePath(c, "/readyz", 10*time.Second) }

// probePath sends one GET of path on c, within timeout, keeping c open,
// and returns the status code, or an error if the server closed the
// connection instead.
func probePath(c net.Conn, path string, timeout time.Duration) (int, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// TestHTTPConnectionsAreCapped: the HTTP listener answers probes without a
// certificate, and it held every connection anyone opened (for 2 minutes
// each when idle after a request): on a real node with 300 file
// descriptors, 400 connections to it left the client API unreachable,
// gossip and the disk check failing with "too many open files". At most
// Config.MaxConns are now open: one more is served by closing the one idle
// longest.
func TestHTTPConnectionsAreCapped(t *testing.T) {
	const max, extra = 4, 3
	s, addr := serve(t, Config{Node: &fakeNode{id: "n1"}, MaxConns: max})
	var held []net.Conn
	for i := range max + extra {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if code, err := probe(c); err != nil || code != http.StatusOK {
			t.Fatalf("connection %d: %d, %v", i+1, code, err)
		}
		held = append(held, c)
	}
	if n := s.conns.Open(); n != max {
		t.Fatalf("%d connections open; want the cap, %d", n, max)
	}
	// The node closed the first extra ones (each the one idle longest when
	// the next came), and kept the rest.
	for i, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		closed := err == io.EOF
		if ne := net.Error(nil); !closed && !(errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		if want := i < extra; closed != want {
			t.Errorf("connection %d closed by the node: %v; want %v", i+1, closed, want)
		}
	}
}

// countingNode is a fakeNode that counts the calls of Health (/readyz).
type countingNode struct {
	*fakeNode
	calls atomic.Int64
}

func (c *countingNode) Health() cluster.Health {
	c.calls.Add(1)
	return c.fakeNode.Health()
}

// blockingNode is a fakeNode whose Health, and so /readyz, waits until
// release is closed, telling entered first.
type blockingNode struct {
	*fakeNode
	entered chan struct{}
	release chan struct{}
}

func (b *blockingNode) Health() cluster.Health {
	b.entered <- struct{}{}
	<-b.release
	return b.fakeNode.Health()
}

// slowKinds are the ways a client without a certificate holds a connection
// while saying as little as it can: each returns with the connection held.
var slowKinds = []struct {
	name string
	hold func(t *testing.T, c net.Conn)
}{
	// Idle after one answered request (a keep-alive).
	{"idle keep-alive", func(t *testing.T, c net.Conn) {
		if code, err := probe(c); err != nil || code != http.StatusOK {
			t.Fatalf("a slow connection's first request: %d, %v", code, err)
		}
	}},
	// A slowloris: part of a request's headers, the rest never sent.
	{"partial headers", func(t *testing.T, c net.Conn) {
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
	}},
	// A request whose body never comes: the handler answers at once, and
	// the server reads the body to discard it (up to ReadTimeout) before
	// it sends the answer (http.Server's ConnState calls this active).
	{"unsent body", func(t *testing.T, c net.Conn) {
		if _, err := io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab"); err != nil {
			t.Fatal(err)
		}
	}},
}

// dialer returns how a test connects to addr: plain TCP, or TLS without a
// client certificate (as a probe), the handshake done.
func dialer(t *testing.T, addr string, useTLS bool) func() net.Conn {
	return func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if !useTLS {
			return c
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			t.Fatal(err)
		}
		return tc
	}
}

// TestSlowConnectionsDoNotStarveProbes: the HTTP listener closed every
// connection over its cap of 64 at once, so 64 slow connections from
// anyone (idle keep-alives, a slowloris's partial headers, a body never
// sent) made /healthz and /readyz unreachable, and an orchestrator would
// kill a healthy node. A new connection now closes the one idle longest:
// slow connections renewed displace each other, not the probes, and a
// probe is answered.
func TestSlowConnectionsDoNotStarveProbes(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		node := &countingNode{fakeNode: &fakeNode{id: "n1"}}
		cfg := Config{Node: node}
		if useTLS {
			name = "tls"
			cfg.TLS = pkitest.New(t).Source(pkitest.Node("n1"))
		}
		t.Run(name, func(t *testing.T) {
			s, addr := serve(t, cfg)
			dial := dialer(t, addr, useTLS)
			// Two waves of slow connections: DefaultMaxConns, then twice as
			// many replacements. Idle time counts from a handler's end, so
			// a first-wave handler that ran late (a loaded machine) is
			// younger than the first replacements, not than the last
			// DefaultMaxConns of them.
			var first []net.Conn
			for wave := 1; wave <= 2; wave++ {
				n := wave * DefaultMaxConns
				for i := range n {
					kind := slowKinds[i%len(slowKinds)]
					c := dial()
					kind.hold(t, c)
					if wave == 1 {
						first = append(first, c)
					}
				}
				served := int64(DefaultMaxConns/len(slowKinds) + 2*DefaultMaxConns/len(slowKinds)*(wave-1))
				want := uint64(wave-1) * 2 * DefaultMaxConns
				waitUntil(t, "the slow connections accepted and their requests read", func() bool {
					return s.conns.Open() == DefaultMaxConns && s.conns.Displaced() == want && node.calls.Load() == served ||
						s.conns.Shed() > 0
				}, func() string {
					return fmt.Sprintf("wave %d: open %d, displaced %d, shed %d, /readyz served %d",
						wave, s.conns.Open(), s.conns.Displaced(), s.conns.Shed(), node.calls.Load())
				})
				if n := s.conns.Shed(); n > 0 {
					t.Fatalf("wave %d: %d slow connections closed at once; want each to displace an idle one", wave, n)
				}
			}
			// The replacements displaced the first wave, every kind of it,
			// not each other.
			for i, c := range first {
				_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				_, err := io.Copy(io.Discard, c)
				if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("first-wave connection %d (%s) still open after its replacements came", i, slowKinds[i%len(slowKinds)].name)
				}
			}
			c := dial()
			if code, err := probeReady(c); err != nil || code != http.StatusOK {
				t.Fatalf("/readyz behind %d slow connections: %d, %v (shed %d)", 3*DefaultMaxConns, code, err, s.conns.Shed())
			}
		})
	}
}

// TestServingConnectionIsNeverDisplaced: a connection whose request is
// being served keeps its slot however many connections come after it, and
// gets its answer; over TLS too (the cap sees the connection under TLS).
func TestServingConnectionIsNeverDisplaced(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		node := &blockingNode{fakeNode: &fakeNode{id: "n1"}, entered: make(chan struct{}, 1), release: make(chan struct{})}
		cfg := Config{Node: node, MaxConns: 4}
		if useTLS {
			name = "tls"
			cfg.TLS = pkitest.New(t).Source(pkitest.Node("n1"))
		}
		t.Run(name, func(t *testing.T) {
			s, addr := serve(t, cfg)
			dial := dialer(t, addr, useTLS)
			busy := dial()
			answer := make(chan error, 1)
			go func() {
				code, err := probeReady(busy)
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("status %d", code)
				}
				answer <- err
			}()
			select {
			case <-node.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("/readyz not served")
			}
			// Three times the cap of slow connections after it.
			for range 3 * cfg.MaxConns {
				dial()
			}
			waitUntil(t, "the slow connections accepted", func() bool {
				return s.conns.Displaced()+s.conns.Shed() >= uint64(2*cfg.MaxConns)
			}, func() string { return fmt.Sprintf("displaced %d, shed %d", s.conns.Displaced(), s.conns.Shed()) })
			close(node.release)
			if err := <-answer; err != nil {
				t.Fatalf("the request being served when its connection was the oldest: %v", err)
			}
		})
	}
}

// waitUntil polls cond until it holds, failing the test after 10 s with
// what and state.
func waitUntil(t *testing.T, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, state())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}
