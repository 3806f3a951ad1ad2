package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/ratelog"
)

const (
	// peerHandshakeTimeout bounds the TLS handshake of an accepted Raft
	// connection: a peer that connects and says nothing holds a handshake
	// slot that long, never the accept loop.
	peerHandshakeTimeout = 5 * time.Second
	// maxPeerHandshakes is how many accepted Raft connections may be in
	// their handshake at once; one more closes the oldest of them.
	maxPeerHandshakes = 64
	// maxInboundPeers is how many distinct node identities may have
	// connected to this node; a certificate naming yet another node is
	// refused. A cluster has a handful of nodes; the bound only keeps a
	// CA that issued many node certificates from growing the transport
	// without end.
	maxInboundPeers = 64
	// targetSep separates the address from the node id in the targets a
	// secureTransport hands its outbound NetworkTransport ("host:port#n2").
	// A host:port never holds '#'.
	targetSep = "#"
)

// raftTransport is what Open gives raft: a Transport it can close.
type raftTransport interface {
	raft.Transport
	raft.WithClose
}

// newTransport makes the node's Raft transport on ln and sets n.stream,
// n.trans and, with TLS, n.secure: hashicorp/raft's NetworkTransport over TCP, or, with Config.TLS,
// a secureTransport that speaks mutual TLS and checks every request's
// claimed sender against the certificate it came with.
func (n *Node) newTransport(ln net.Listener, provider raft.ServerAddressProvider, hl hclog.Logger) raftTransport {
	n.stream = &streamLayer{Listener: ln, advertise: tcpAddr(n.advertise)}
	netConfig := func(stream raft.StreamLayer, name string) *raft.NetworkTransportConfig {
		return &raft.NetworkTransportConfig{
			Stream:          stream,
			MaxPool:         transportMaxPool,
			MaxRPCsInFlight: transportMaxRPCsInFlight,
			Timeout:         transportTimeout,
			Logger:          hl.Named(name),
		}
	}
	if n.cfg.TLS == nil {
		c := netConfig(n.stream, "net")
		c.ServerAddressProvider = provider
		n.trans = raft.NewNetworkTransportWithConfig(c)
		if n.routes != nil {
			return &routedTransport{NetworkTransport: n.trans, routes: n.routes}
		}
		return n.trans
	}
	s := &secureTransport{
		layer:     n.stream,
		src:       n.cfg.TLS,
		dialAddrs: n.cfg.DialAddrs,
		routes:    n.routes,
		log:       n.log,
		consume:   make(chan raft.RPC),
		done:      make(chan struct{}),
		connLog:   ratelog.New(time.Second, 5),
		claimLog:  ratelog.New(time.Second, 5),
		serverTLS: n.cfg.TLS.ServerConfig(pki.RequireRole(pki.RoleNode)),
	}
	s.newInbound = func(peer string, stream raft.StreamLayer) *raft.NetworkTransport {
		return raft.NewNetworkTransportWithConfig(netConfig(stream, "net."+peer))
	}
	s.out = raft.NewNetworkTransportWithConfig(netConfig(&outboundStream{s: s}, "net"))
	s.mu.in = make(map[string]*inboundPeer)
	n.trans, n.secure = s.out, s
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// secureTransport is raft's Transport over mutual TLS. Every connection, in
// and out, presents a node certificate of the cluster's CA (pki.Source). A
// connection this node dials must reach the node it meant to: the peer's
// certificate must name the id raft dialed. A connection it accepts is
// handed, by the node id its certificate names, to a NetworkTransport of
// that peer alone; every request arriving there must claim that id in its
// RPC header, or it is refused with an error and never reaches raft.
//
// hashicorp/raft's stream layer sees addresses, not ids, and its RPCs do not
// say which connection they came on; one inbound NetworkTransport per peer
// identity is what lets a request be matched with its certificate without
// decoding raft's wire format. Outbound RPCs go through one NetworkTransport
// whose targets carry the id ("host:port#id") to its Dial. See DESIGN.md,
// "Raft over mutual TLS". It is safe for concurrent use.
type secureTransport struct {
	out        *raft.NetworkTransport // dials; accepts nothing
	layer      *streamLayer           // the listener and every connection
	src        *pki.Source
	serverTLS  *tls.Config
	dialAddrs  map[string]string
	routes     *peerRoutes // members' gossiped addresses, proven; nil without gossip
	log        *slog.Logger
	newInbound func(peer string, stream raft.StreamLayer) *raft.NetworkTransport

	consume   chan raft.RPC // to raft, from every inbound transport
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup

	// pending are the accepted connections in their handshake, oldest
	// first; at most maxPeerHandshakes.
	pending struct {
		sync.Mutex
		conns []net.Conn
	}

	hb struct {
		sync.Mutex
		fn func(raft.RPC)
	}
	mu struct {
		sync.Mutex
		in     map[string]*inboundPeer // by peer node id
		closed bool
	}

	// refused counts the connections and requests refused; each kind is
	// logged through its own rate limit, so that a flood of one does not
	// hide the other.
	refused           atomic.Uint64
	connLog, claimLog *ratelog.Limiter
}

// refuse logs (rate-limited) and counts a refused connection.
func (s *secureTransport) refuse(msg string, args ...any) {
	total := s.refused.Add(1)
	s.connLog.Log(s.log, slog.LevelWarn, "raft: "+msg, append(args, "refused_total", total)...)
}

// acceptLoop accepts connections until the listener closes, and starts
// each one's handshake on its own goroutine.
func (s *secureTransport) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		raw, err := s.layer.Listener.Accept()
		if err != nil {
			if s.closing() || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.refuse("accept failed", "err", err)
			select {
			case <-time.After(delay):
				continue
			case <-s.done:
				return
			}
		}
		delay = 0
		c, err := s.layer.track(raw)
		if err != nil {
			return // closed
		}
		if old := s.startHandshake(c); old != nil {
			old.Close()
			s.refuse("closed the oldest connection in its handshake: too many handshakes in progress",
				"remote", old.RemoteAddr().String())
		}
		s.wg.Add(1)
		go s.handshake(c)
	}
}

// startHandshake records c as in its handshake and returns the oldest
// connection in its handshake if there are now too many, no longer
// recorded, for the caller to close. Closing the oldest, not refusing the
// newest: silent connections from anyone who reaches the port (no
// certificate needed to connect) would otherwise hold every slot, 64 of
// them re-opened every peerHandshakeTimeout, and refuse every peer's new
// connection, elections' included (TestSilentConnectionsDoNotLockPeersOut).
// A peer's handshake takes milliseconds, so a flood must now open 64
// connections within that time to displace one.
func (s *secureTransport) startHandshake(c net.Conn) (oldest net.Conn) {
	s.pending.Lock()
	defer s.pending.Unlock()
	s.pending.conns = append(s.pending.conns, c)
	if len(s.pending.conns) > maxPeerHandshakes {
		oldest = s.pending.conns[0]
		s.pending.conns = slices.Delete(s.pending.conns, 0, 1)
	}
	return oldest
}

// endHandshake forgets c as in its handshake.
func (s *secureTransport) endHandshake(c net.Conn) {
	s.pending.Lock()
	defer s.pending.Unlock()
	if i := slices.Index(s.pending.conns, c); i >= 0 {
		s.pending.conns = slices.Delete(s.pending.conns, i, i+1)
	}
}

// handshake runs an accepted connection's TLS handshake, bounded by
// peerHandshakeTimeout, and hands the connection to its peer's transport.
func (s *secureTransport) handshake(c net.Conn) {
	defer s.wg.Done()
	tc := tls.Server(c, s.serverTLS)
	ctx, cancel := context.WithTimeout(context.Background(), peerHandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	s.endHandshake(c)
	if err != nil {
		tc.Close()
		if !s.closing() {
			s.refuse("refused a connection", "remote", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	id, err := pki.PeerIdentity(tc.ConnectionState()) // a node: ServerConfig checked
	if err != nil {
		tc.Close()
		s.refuse("refused a connection", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	stream, err := s.inbound(id.Name)
	if err != nil {
		tc.Close()
		if !s.closing() {
			s.refuse("refused a connection", "remote", c.RemoteAddr().String(), "peer", id.Name, "err", err)
		}
		return
	}
	select {
	case stream.conns <- tc:
	case <-s.done:
		tc.Close()
	}
}

// inbound returns the stream of the inbound transport for peer, making the
// transport on first use.
func (s *secureTransport) inbound(peer string) (*peerStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, errClosed
	}
	if p, ok := s.mu.in[peer]; ok {
		return p.stream, nil
	}
	if len(s.mu.in) >= maxInboundPeers {
		return nil, fmt.Errorf("%d node identities have connected already; refusing another", len(s.mu.in))
	}
	ps := &peerStream{addr: s.layer.advertise, conns: make(chan net.Conn), done: make(chan struct{})}
	t := s.newInbound(peer, ps)
	t.SetHeartbeatHandler(func(rpc raft.RPC) { s.heartbeat(peer, rpc) })
	s.mu.in[peer] = &inboundPeer{trans: t, stream: ps}
	s.wg.Add(1)
	go s.forward(peer, t.Consumer())
	return ps, nil
}

// forward passes the RPCs of peer's transport to raft, refusing each whose
// header claims another sender.
func (s *secureTransport) forward(peer string, ch <-chan raft.RPC) {
	defer s.wg.Done()
	for {
		select {
		case rpc := <-ch:
			if err := s.checkClaim(peer, rpc); err != nil {
				rpc.Respond(nil, err)
				continue
			}
			s.deliver(rpc)
		case <-s.done:
			return
		}
	}
}

// deliver hands rpc to raft, or answers it with ErrTransportShutdown once
// the transport closes.
func (s *secureTransport) deliver(rpc raft.RPC) {
	select {
	case s.consume <- rpc:
	case <-s.done:
		rpc.Respond(nil, raft.ErrTransportShutdown)
	}
}

// heartbeat is the inbound transports' fast path for heartbeats, checked as
// every other request.
func (s *secureTransport) heartbeat(peer string, rpc raft.RPC) {
	if err := s.checkClaim(peer, rpc); err != nil {
		rpc.Respond(nil, err)
		return
	}
	s.hb.Lock()
	fn := s.hb.fn
	s.hb.Unlock()
	if fn == nil {
		s.deliver(rpc)
		return
	}
	fn(rpc)
}

// checkClaim returns an error, and logs the refusal, unless rpc's header
// names peer, the node id of the certificate it came with.
func (s *secureTransport) checkClaim(peer string, rpc raft.RPC) error {
	h, ok := rpc.Command.(raft.WithRPCHeader)
	claimed := ""
	if ok {
		claimed = string(h.GetRPCHeader().ID)
	}
	if ok && claimed == peer {
		return nil
	}
	err := fmt.Errorf("refused: the sender's certificate names node %q but its %T claims to come from %q", peer, rpc.Command, claimed)
	total := s.refused.Add(1)
	s.claimLog.Log(s.log, slog.LevelWarn, "raft: refused a request whose sender does not match its certificate",
		"peer", peer, "claimed", claimed, "rpc", fmt.Sprintf("%T", rpc.Command), "refused_total", total)
	return err
}

func (s *secureTransport) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// dial connects to the node named in target ("host:port#id") and runs the
// TLS handshake, both within timeout; the peer's certificate must name that
// node.
func (s *secureTransport) dial(target raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	addr, id, ok := strings.Cut(string(target), targetSep)
	if !ok {
		return nil, fmt.Errorf("raft dial %q: no node id in the target", target)
	}
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := s.layer.track(raw)
	if err != nil {
		return nil, err
	}
	want := pki.Identity{Role: pki.RoleNode, Name: id}
	tc := tls.Client(c, s.src.ClientConfig(false, pki.RequireIdentity(want)))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, fmt.Errorf("raft: TLS handshake with %s at %s: %w", want, addr, err)
	}
	return tc, nil
}

// target returns what the outbound transport dials for peer id: its dial
// address (DialAddrs, or addr) with the id attached.
func (s *secureTransport) target(id raft.ServerID, addr raft.ServerAddress) raft.ServerAddress {
	if a, ok := s.dialAddrs[string(id)]; ok {
		addr = raft.ServerAddress(a)
	}
	return addr + targetSep + raft.ServerAddress(id)
}

// route returns what raft's RPCs to peer id, configured at addr, dial: its
// route (routeMembers) if it has one, through target. The TLS handshake
// still requires a certificate naming id, wherever the route points.
func (s *secureTransport) route(id raft.ServerID, addr raft.ServerAddress) raft.ServerAddress {
	return s.target(id, s.routes.resolve(id, addr))
}

// Consumer implements raft.Transport: the RPCs of every inbound transport
// whose sender matched its certificate.
func (s *secureTransport) Consumer() <-chan raft.RPC { return s.consume }

// LocalAddr implements raft.Transport.
func (s *secureTransport) LocalAddr() raft.ServerAddress { return s.out.LocalAddr() }

// AppendEntriesPipeline implements raft.Transport.
func (s *secureTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	return s.out.AppendEntriesPipeline(id, s.route(id, target))
}

// AppendEntries implements raft.Transport.
func (s *secureTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return s.routes.send(id, target, !isHeartbeat(args), func(addr raft.ServerAddress) error {
		return s.out.AppendEntries(id, s.target(id, addr), args, resp)
	})
}

// RequestVote implements raft.Transport.
func (s *secureTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return s.out.RequestVote(id, s.route(id, target), args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (s *secureTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return s.out.RequestPreVote(id, s.route(id, target), args, resp)
}

// InstallSnapshot implements raft.Transport.
func (s *secureTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return s.routes.send(id, target, true, func(addr raft.ServerAddress) error {
		return s.out.InstallSnapshot(id, s.target(id, addr), args, resp, data)
	})
}

// TimeoutNow implements raft.Transport.
func (s *secureTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return s.out.TimeoutNow(id, s.route(id, target), args, resp)
}

// EncodePeer implements raft.Transport.
func (s *secureTransport) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	return s.out.EncodePeer(id, addr)
}

// DecodePeer implements raft.Transport.
func (s *secureTransport) DecodePeer(b []byte) raft.ServerAddress { return s.out.DecodePeer(b) }

// SetHeartbeatHandler implements raft.Transport.
func (s *secureTransport) SetHeartbeatHandler(fn func(raft.RPC)) {
	s.hb.Lock()
	s.hb.fn = fn
	s.hb.Unlock()
}

// Close implements raft.WithClose: it closes the listener, every
// transport and connection, and waits for the transport's goroutines.
func (s *secureTransport) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.layer.closeConns()
		s.mu.Lock()
		s.mu.closed = true
		in := s.mu.in
		s.mu.Unlock()
		s.out.Close()
		for _, p := range in {
			p.trans.Close()
		}
		s.wg.Wait()
	})
	return nil
}

// outboundStream is the outbound transport's stream layer: it dials through
// the secureTransport and accepts nothing (Accept blocks until Close).
type outboundStream struct {
	s         *secureTransport
	closeOnce sync.Once
	closed    chan struct{}
	initOnce  sync.Once
}

func (o *outboundStream) init() { o.initOnce.Do(func() { o.closed = make(chan struct{}) }) }

func (o *outboundStream) Accept() (net.Conn, error) {
	o.init()
	<-o.closed
	return nil, errClosed
}

func (o *outboundStream) Close() error {
	o.init()
	o.closeOnce.Do(func() { close(o.closed) })
	return nil
}

func (o *outboundStream) Addr() net.Addr { return o.s.layer.advertise }

func (o *outboundStream) Dial(target raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return o.s.dial(target, timeout)
}

// inboundPeer is the transport that serves one peer's connections.
type inboundPeer struct {
	trans  *raft.NetworkTransport
	stream *peerStream
}

// peerStream is an inbound transport's stream layer: Accept returns the
// connections whose certificates name its peer; it dials nothing.
type peerStream struct {
	addr      net.Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func (p *peerStream) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		return nil, errClosed
	}
}

func (p *peerStream) Close() error {
	p.closeOnce.Do(func() { close(p.done) })
	return nil
}

func (p *peerStream) Addr() net.Addr { return p.addr }

func (p *peerStream) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, errors.New("an inbound raft transport dials nothing")
}
