package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/buildinfo"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/web"
	"github.com/leasehold/leasehold/transport"
)

// serveHTTP are serve's flags for its HTTP listener: metrics, health and
// the console.
type serveHTTP struct {
	addr  *string
	peers *string
}

func addServeHTTPFlags(fs *flag.FlagSet) *serveHTTP {
	return &serveHTTP{
		addr: fs.String("http-addr", "", "address for /metrics, /healthz, /readyz and the web console (HTTPS with the --tls-* files); empty: none. "+
			"With --gossip-addr it is gossiped for the other consoles, with --raft-addr's host if its own is 0.0.0.0 or ::"),
		peers: fs.String("console-peers", "", "the other nodes' --http-addr, id=host:port,...: the console shows their health "+
			"and forwards limit changes to the leader's (default with --gossip-addr: what each member gossips)"),
	}
}

// httpFace is the HTTP listener of a node, once started.
type httpFace struct {
	ln   net.Listener
	addr string // --http-addr
	srv  *web.Server
	reg  *prometheus.Registry
}

// listen binds --http-addr and makes the registry the node reports its
// metrics to, with the Go runtime's, the process's, Raft's, the build's
// and, with TLS, the certificates' expiry; nil if --http-addr is empty.
func (h *serveHTTP) listen(src *pki.Source, insecureRemoteOK bool) (*httpFace, error) {
	if *h.addr == "" {
		if *h.peers != "" {
			return nil, errors.New("--console-peers needs --http-addr")
		}
		return nil, nil
	}
	if src == nil && !insecureRemoteOK && !isLoopback(*h.addr) {
		return nil, fmt.Errorf("without TLS, --http-addr %s is not a loopback address: anyone who reaches it could change limits; "+
			"serve with --tls-ca/--tls-cert/--tls-key, or pass --insecure-allow-remote", *h.addr)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := web.RegisterInfoMetrics(reg, buildinfo.Read(), src); err != nil {
		return nil, err
	}
	if err := cluster.RegisterRaftMetrics(reg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", *h.addr)
	if err != nil {
		return nil, fmt.Errorf("listen for HTTP: %w", err)
	}
	return &httpFace{ln: ln, addr: *h.addr, reg: reg}, nil
}

// advertised is the address the node gossips for its HTTP face:
// --http-addr, with the port the listener took if it asked for port 0 and,
// if it listens on every interface, --raft-addr's host (advertisedAddr);
// "" without an HTTP face.
func (f *httpFace) advertised(raftAddr string) (string, error) {
	if f == nil {
		return "", nil
	}
	addr := f.addr
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		if _, bound, err := net.SplitHostPort(f.ln.Addr().String()); err == nil {
			addr = net.JoinHostPort(host, bound)
		}
	}
	return advertisedAddr("--http-addr", addr, raftAddr)
}

// start serves the node's HTTP face on the listener; errors end up on
// served.
func (f *httpFace) start(h *serveHTTP, node *cluster.Node, guard *transport.Guard, src *pki.Source, log *slog.Logger,
	served chan<- error) error {
	peers, err := parseIDAddrs("--console-peers", *h.peers)
	if err != nil {
		return err
	}
	// The other consoles: where --console-peers says, else, with
	// membership on, where each member gossips its --http-addr.
	var dir web.Peers
	switch {
	case len(peers) > 0:
		static := web.StaticPeers{}
		for _, p := range peers {
			static[p.ID] = p.RaftAddr
		}
		dir = static
	case node.GossipAddr() != "":
		dir = web.MemberPeers(node.Member)
	}
	f.reg.MustRegister(web.NewGuardCollector(guard))
	f.srv, err = web.New(web.Config{Node: node, Gatherer: f.reg, TLS: src, Peers: dir, Logger: log})
	if err != nil {
		return err
	}
	go func() {
		if err := f.srv.Serve(f.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			served <- fmt.Errorf("http: %w", err)
		}
	}()
	log.Info("serving http", "addr", f.ln.Addr().String(), "scheme", f.srv.Scheme())
	return nil
}

// close stops the HTTP face, or just its listener if it never started.
func (f *httpFace) close(ctx context.Context) {
	if f == nil {
		return
	}
	if f.srv == nil {
		f.ln.Close()
		return
	}
	_ = f.srv.Close(ctx)
}
