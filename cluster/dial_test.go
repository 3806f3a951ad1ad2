package cluster

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestDialAddrsRouteRaftThroughThem: with DialAddrs, each node reaches each
// peer through the address the map names (here a counting forwarder per
// directed pair), not the peer's configured RaftAddr, and the cluster still
// commits writes.
func TestDialAddrsRouteRaftThroughThem(t *testing.T) {
	var mu sync.Mutex
	fwds := map[string]*forwarder{} // "from>to"
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.DialAddrs = map[string]string{}
		for _, p := range cfg.Peers {
			if p.ID == cfg.ID {
				continue
			}
			f := newForwarder(t, p.RaftAddr)
			mu.Lock()
			fwds[cfg.ID+">"+p.ID] = f
			mu.Unlock()
			cfg.DialAddrs[p.ID] = f.addr
		}
	})
	c.setLimit("k", hourly(10))
	if resp := c.acquire(take("client", 1, "k", 1, 0)); !resp.GetAllowed() {
		t.Fatalf("acquire = %v; want allowed", resp)
	}
	leader := c.leader()
	for _, f := range c.followers(leader) {
		name := leader.cfg.ID + ">" + f.cfg.ID
		mu.Lock()
		n := fwds[name].accepted.Load()
		mu.Unlock()
		if n == 0 {
			t.Errorf("forwarder %s accepted no connection; the leader dialed its peer directly", name)
		}
	}
}

func TestValidateRejectsBadDialAddr(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID, cfg.Dir, cfg.RaftAddr = "n1", t.TempDir(), "127.0.0.1:7201"
	cfg.Peers = []Peer{{ID: "n1", RaftAddr: "127.0.0.1:7201"}, {ID: "n2", RaftAddr: "127.0.0.1:7202"}}
	cfg.DialAddrs = map[string]string{"n2": "0.0.0.0:9"}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), `DialAddrs["n2"]`) {
		t.Fatalf("Validate() = %v; want an error naming DialAddrs[\"n2\"]", err)
	}
}

// forwarder accepts connections on a loopback port and copies bytes both
// ways to target, counting the connections it accepted. Once cut, it is a
// black hole: it drops what it reads, and holds new connections unanswered.
type forwarder struct {
	addr     string
	accepted atomic.Int64
	cut      atomic.Bool
}

func newForwarder(t testing.TB, target string) *forwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := &forwarder{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			f.accepted.Add(1)
			conns.Store(in, true)
			if f.cut.Load() {
				continue // held open, unanswered, until the cleanup
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			conns.Store(out, true)
			wg.Go(func() { f.pump(out, in) })
			wg.Go(func() { f.pump(in, out) })
		}
	})
	return f
}

// pump copies src to dst, dropping what it reads while f is cut, until
// either fails; then it closes dst.
func (f *forwarder) pump(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.cut.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
