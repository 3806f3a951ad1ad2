package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/internal/loopback"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Peer is a node id and an address: an entry of `serve --peers` (the Raft
// address) or `--raft-dial` (the address to dial instead).
type Peer struct {
	ID, Addr string
}

// joinPeers formats peers as a flag value: "n1=127.0.0.1:7201,n2=...".
func joinPeers(peers []Peer) string {
	parts := make([]string, len(peers))
	for i, p := range peers {
		parts[i] = p.ID + "=" + p.Addr
	}
	return strings.Join(parts, ",")
}

// NodeSpec says how to run one `leasehold serve` node. Args turns it into
// the command line; Options (embedded) says how to run the process.
type NodeSpec struct {
	ID         string // --id; also the process's name
	Data       string // --data; created (with parents) before each start
	ClientAddr string // --grpc-addr, the client API
	RaftAddr   string // --raft-addr
	// Peers is --peers, the initial cluster including this node; empty
	// leaves the flag out.
	Peers []Peer
	// RaftDial is --raft-dial: peers to dial at another address than
	// their Raft address (a fault-injecting proxy); empty leaves it out.
	RaftDial []Peer
	// LogLevel is --log-level; "" leaves serve's default (info).
	LogLevel string
	// GossipAddr is --gossip-addr: membership on; "" leaves it off.
	GossipAddr string
	// Join is --join, gossip addresses of members to join (with
	// GossipAddr); BootstrapExpect is --bootstrap-expect (0: left out).
	Join            []string
	BootstrapExpect int
	// GossipKey is --gossip-key-file (with GossipAddr); "" gossips in
	// plain text, which serve allows only with --insecure.
	GossipKey string
	// HTTPAddr is --http-addr (metrics, health, console); "" leaves it
	// out. ConsolePeers is --console-peers: the other nodes' HTTPAddr.
	HTTPAddr     string
	ConsolePeers []Peer
	// TLS is the node's certificate, key and CA bundle: --tls-ca,
	// --tls-cert and --tls-key. nil serves plain text: --insecure.
	TLS *TLSFiles
	// ExtraArgs are appended after the flags above: the hook for flags
	// this package does not know, such as a join list or timeouts.
	ExtraArgs []string
	Options
}

// Args returns the node's command line after the binary: "serve" and its
// flags, in a fixed order.
func (s NodeSpec) Args() []string {
	args := []string{"serve", "--id", s.ID, "--data", s.Data, "--grpc-addr", s.ClientAddr, "--raft-addr", s.RaftAddr}
	if len(s.Peers) > 0 {
		args = append(args, "--peers", joinPeers(s.Peers))
	}
	if len(s.RaftDial) > 0 {
		args = append(args, "--raft-dial", joinPeers(s.RaftDial))
	}
	if s.LogLevel != "" {
		args = append(args, "--log-level", s.LogLevel)
	}
	if s.GossipAddr != "" {
		args = append(args, "--gossip-addr", s.GossipAddr)
		if len(s.Join) > 0 {
			args = append(args, "--join", strings.Join(s.Join, ","))
		}
		if s.BootstrapExpect > 0 {
			args = append(args, "--bootstrap-expect", fmt.Sprint(s.BootstrapExpect))
		}
		if s.GossipKey != "" {
			args = append(args, "--gossip-key-file", s.GossipKey)
		}
	}
	if s.HTTPAddr != "" {
		args = append(args, "--http-addr", s.HTTPAddr)
	}
	if len(s.ConsolePeers) > 0 {
		args = append(args, "--console-peers", joinPeers(s.ConsolePeers))
	}
	if s.TLS != nil {
		args = append(args, s.TLS.ServeArgs()...)
	} else {
		args = append(args, "--insecure")
	}
	return append(args, s.ExtraArgs...)
}

// Validate reports every missing field at once.
func (s NodeSpec) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{
		{"ID", s.ID}, {"Data", s.Data}, {"ClientAddr", s.ClientAddr}, {"RaftAddr", s.RaftAddr},
	} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("node %q: %s is empty", s.ID, f.name))
		}
	}
	return errors.Join(errs...)
}

// Layout lays out a local cluster of nodes n1..nN sharing one host: their
// ids, addresses, data directories, logs and --peers. Specs returns the
// specs, which a caller may change (add --raft-dial, Env, OnExit) before
// NewCluster.
type Layout struct {
	// Nodes is the number of nodes, at least 1 (at most 99 with BasePort).
	Nodes int
	// Dir holds each node's data directory, Dir/<id>.
	Dir string
	// LogDir holds each node's log, LogDir/<id>.log; "" means Dir.
	LogDir string
	// Host is the address nodes listen on; "" means 127.0.0.1.
	Host string
	// BasePort, if not 0, fixes the ports: node i (from 1) serves clients
	// on BasePort+i, Raft on BasePort+100+i, HTTP (with HTTP) on
	// BasePort+200+i and gossip (with Gossip) on BasePort+300+i. With 0,
	// every port is a free one on 127.0.0.1 below the ephemeral range
	// (loopback.StablePorts), and Host must be that.
	BasePort int
	// LogLevel is each node's --log-level; "" leaves serve's default.
	LogLevel string
	// HTTP gives each node an HTTP listener (--http-addr: metrics,
	// health, console) on BasePort+200+i, or a free port. Without Gossip
	// each is told the others' (--console-peers); with it, the consoles
	// find each other in gossip.
	HTTP bool
	// Insecure makes the nodes serve plain text (serve --insecure). By
	// default each serves mutual TLS with a node certificate of the CA in
	// TLSDir (Certs), naming loopback and Host.
	Insecure bool
	// TLSDir holds the cluster's CA and certificates: made on first use,
	// reused after (OpenCerts). "" means Dir/tls.
	TLSDir string
	// ExtraArgs, if set, is called once per node with its spec and returns
	// the spec's ExtraArgs: flags every node of this cluster takes.
	ExtraArgs func(NodeSpec) []string
	// Gossip turns membership on: each node gossips on a port of its own
	// (BasePort+300+i with BasePort), joins every node's gossip address,
	// and the Nodes bootstrap with --bootstrap-expect Nodes instead of a
	// static --peers list. Unless Insecure, gossip is encrypted with the
	// key in the certificate directory (Certs.GossipKey).
	Gossip bool
	// Spares, with Gossip, are specs for this many more nodes after the
	// first Nodes (ids n<Nodes+1>...), not bootstrapped: started later,
	// each joins the cluster as a fresh node and the leader adds it.
	Spares int
}

// Offsets from BasePort of each kind of port, and the index of each kind
// in the ports Specs takes.
const (
	kindClient = iota
	kindRaft
	kindHTTP
	kindGossip
)

// topOffset is the offset from BasePort of the last kind of port used.
func (l Layout) topOffset() int {
	switch {
	case l.Gossip:
		return 100 * kindGossip
	case l.HTTP:
		return 100 * kindHTTP
	}
	return 100 * kindRaft
}

// Validate reports every problem with l at once.
func (l Layout) Validate() error {
	var errs []error
	if l.Nodes < 1 || (l.BasePort != 0 && l.Nodes > 99) {
		errs = append(errs, fmt.Errorf("layout: %d nodes: want 1 to 99", l.Nodes))
	}
	if l.Dir == "" {
		errs = append(errs, errors.New("layout: Dir is empty"))
	}
	if top := l.topOffset(); l.BasePort < 0 || l.BasePort+top+l.Nodes+l.Spares > 65535 {
		errs = append(errs, fmt.Errorf("layout: base port %d: want 0, or 1 to %d", l.BasePort, 65535-top-l.Nodes-l.Spares))
	}
	if l.Spares < 0 || (l.Spares > 0 && !l.Gossip) {
		errs = append(errs, fmt.Errorf("layout: %d spares: spares join through gossip (Gossip)", l.Spares))
	}
	if l.BasePort == 0 && l.Host != "" && l.Host != "127.0.0.1" {
		errs = append(errs, fmt.Errorf("layout: host %q with free ports: free ports are found on 127.0.0.1", l.Host))
	}
	if l.Insecure && l.TLSDir != "" {
		errs = append(errs, fmt.Errorf("layout: TLSDir %q with Insecure: plain text uses no certificates", l.TLSDir))
	}
	return errors.Join(errs...)
}

// Certs returns the cluster's certificates, OpenCerts of TLSDir (or
// Dir/tls), making the CA on first use; nil if Insecure.
func (l Layout) Certs() (*Certs, error) {
	if l.Insecure {
		return nil, nil
	}
	dir := l.TLSDir
	if dir == "" {
		if l.Dir == "" {
			return nil, errors.New("layout: Dir is empty")
		}
		dir = filepath.Join(l.Dir, "tls")
	}
	return OpenCerts(dir)
}

// Specs returns the nodes' specs, n1 first, each with every node in Peers
// and, unless Insecure, its TLS files (Certs.Node: issued on first use).
func (l Layout) Specs() ([]NodeSpec, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	certs, err := l.Certs()
	if err != nil {
		return nil, err
	}
	host, logDir := l.Host, l.LogDir
	if host == "" {
		host = "127.0.0.1"
	}
	if logDir == "" {
		logDir = l.Dir
	}
	// port(k, i) is node i's port of kind k: fixed from BasePort, or
	// one of n free ones per kind used.
	n := l.Nodes + l.Spares
	used := map[int]int{kindClient: 0, kindRaft: 1} // kind: its n free ports' place
	if l.HTTP {
		used[kindHTTP] = len(used)
	}
	if l.Gossip {
		used[kindGossip] = len(used)
	}
	var free []int
	if l.BasePort == 0 {
		if free, err = loopback.StablePorts(len(used) * n); err != nil {
			return nil, err
		}
	}
	port := func(k, i int) int {
		if l.BasePort == 0 {
			return free[used[k]*n+i]
		}
		return l.BasePort + 100*k + 1 + i
	}
	var gossipKey string
	if l.Gossip && certs != nil {
		if gossipKey, err = certs.GossipKey(); err != nil {
			return nil, err
		}
	}
	specs := make([]NodeSpec, n)
	peers := make([]Peer, n)
	var seeds []string
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		specs[i] = NodeSpec{
			ID:         id,
			Data:       filepath.Join(l.Dir, id),
			ClientAddr: fmt.Sprintf("%s:%d", host, port(kindClient, i)),
			RaftAddr:   fmt.Sprintf("%s:%d", host, port(kindRaft, i)),
			LogLevel:   l.LogLevel,
			Options:    Options{Log: filepath.Join(logDir, id+".log")},
		}
		peers[i] = Peer{ID: id, Addr: specs[i].RaftAddr}
		if l.HTTP {
			specs[i].HTTPAddr = fmt.Sprintf("%s:%d", host, port(kindHTTP, i))
		}
		if l.Gossip {
			specs[i].GossipAddr, specs[i].GossipKey = fmt.Sprintf("%s:%d", host, port(kindGossip, i)), gossipKey
			if i < l.Nodes {
				specs[i].BootstrapExpect = l.Nodes
			}
			seeds = append(seeds, specs[i].GossipAddr)
		}
	}
	for i := range specs {
		if l.Gossip {
			// The consoles find each other in gossip: no --console-peers.
			specs[i].Join = slices.Clone(seeds[:l.Nodes])
		} else {
			specs[i].Peers = append([]Peer(nil), peers...)
			for j := range specs {
				if j != i && l.HTTP {
					specs[i].ConsolePeers = append(specs[i].ConsolePeers, Peer{ID: specs[j].ID, Addr: specs[j].HTTPAddr})
				}
			}
		}
		if certs != nil {
			f, err := certs.Node(specs[i].ID, host)
			if err != nil {
				return nil, err
			}
			specs[i].TLS = &f
		}
		if l.ExtraArgs != nil {
			specs[i].ExtraArgs = l.ExtraArgs(specs[i])
		}
	}
	return specs, nil
}

// Node is one `leasehold serve` process and a connection to its client
// API. Its Process methods start, kill, pause and stop it. It is safe for
// concurrent use.
type Node struct {
	*Process
	spec NodeSpec
	conn *grpc.ClientConn
	api  pb.LeaseholdClient
}

// newNode prepares spec's process (of the leasehold binary bin) and dials
// its client address lazily with dial; it starts nothing.
func newNode(bin string, spec NodeSpec, dial []grpc.DialOption) (*Node, error) {
	cc, err := grpc.NewClient(spec.ClientAddr, dial...)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", spec.ID, err)
	}
	opts := spec.Options
	before := opts.BeforeStart
	opts.BeforeStart = func() error {
		if err := os.MkdirAll(spec.Data, 0o755); err != nil {
			return err
		}
		if before != nil {
			return before()
		}
		return nil
	}
	return &Node{Process: New(spec.ID, bin, spec.Args(), opts), spec: spec, conn: cc,
		api: pb.NewLeaseholdClient(cc)}, nil
}

// ID returns the node's id.
func (n *Node) ID() string { return n.spec.ID }

// ClientAddr returns the address of its client API.
func (n *Node) ClientAddr() string { return n.spec.ClientAddr }

// RaftAddr returns its Raft address.
func (n *Node) RaftAddr() string { return n.spec.RaftAddr }

// HTTPAddr returns the address of its HTTP listener (metrics, health,
// console), "" if it has none.
func (n *Node) HTTPAddr() string { return n.spec.HTTPAddr }

// Spec returns the spec the node was made from; do not change its slices.
func (n *Node) Spec() NodeSpec { return n.spec }

// API returns a client of the node's API (the connection is the node's;
// it fails while the process is down).
func (n *Node) API() pb.LeaseholdClient { return n.api }

// Status asks the node for its status.
func (n *Node) Status(ctx context.Context) (*pb.StatusResponse, error) {
	return n.api.Status(ctx, &pb.StatusRequest{})
}

// down reports whether the node cannot answer: not running, or paused.
func (n *Node) down() bool { return !n.Running() || n.Paused() }
