package proc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// ClusterConfig configures NewCluster.
type ClusterConfig struct {
	// Binary is the leasehold binary every node runs (required).
	Binary string
	// Nodes are the nodes' specs, in order (at least one; distinct ids).
	Nodes []NodeSpec
	// Certs is the nodes' CA (Layout.Certs): the Cluster's connections to
	// the nodes present its operator certificate AdminName (issued on
	// first use), which may call every RPC, and Cluster.Certs returns it,
	// for certificates of the caller's own clients. Required unless
	// Insecure.
	Certs *Certs
	// Insecure says the nodes serve plain text (Layout.Insecure), which
	// the Cluster's connections then speak. It excludes Certs; with
	// neither, NewCluster fails with ErrNoTransportSecurity rather than
	// speak plain text to nodes that may serve TLS.
	Insecure bool
	// DialOptions are more gRPC options for those connections, without
	// transport credentials (Certs or Insecure make those).
	DialOptions []grpc.DialOption
}

// Validate reports every problem with cfg at once.
func (cfg ClusterConfig) Validate() error {
	var errs []error
	switch {
	case cfg.Certs == nil && !cfg.Insecure:
		errs = append(errs, fmt.Errorf("cluster: %w", ErrNoTransportSecurity))
	case cfg.Certs != nil && cfg.Insecure:
		errs = append(errs, fmt.Errorf("cluster: Certs (%s) and Insecure exclude each other", cfg.Certs.Dir()))
	}
	if cfg.Binary == "" {
		errs = append(errs, errors.New("cluster: Binary is empty"))
	}
	if len(cfg.Nodes) == 0 {
		errs = append(errs, errors.New("cluster: no nodes"))
	}
	seen := map[string]bool{}
	for _, s := range cfg.Nodes {
		if err := s.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[s.ID] {
			errs = append(errs, fmt.Errorf("cluster: node id %q twice", s.ID))
		}
		seen[s.ID] = true
	}
	return errors.Join(errs...)
}

// Cluster is a set of `leasehold serve` processes that the runner started,
// or will start, and may kill, pause, restart and stop; each node also has
// a connection to its client API. It is safe for concurrent use.
type Cluster struct {
	bin   string
	dial  []grpc.DialOption
	certs *Certs
	sec   Security     // of the Cluster's own connections
	hint  atomic.Int64 // OnLeader's last leader, an index into nodes
	mu    struct {
		sync.Mutex
		nodes []*Node // append only
	}
}

// NewCluster prepares cfg's nodes; it starts none of them (Start does).
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cluster{bin: cfg.Binary, dial: slices.Clone(cfg.DialOptions), certs: cfg.Certs, sec: Plaintext}
	if cfg.Certs != nil {
		admin, err := cfg.Certs.Operator(AdminName)
		if err != nil {
			return nil, err
		}
		c.sec = Security{TLS: &admin}
	}
	creds, err := c.sec.DialOption()
	if err != nil {
		return nil, err
	}
	c.dial = append(c.dial, creds)
	for _, s := range cfg.Nodes {
		if _, err := c.Add(s); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Add adds a node made from spec to the cluster, without starting it (its
// Start does). The id must be new.
func (c *Cluster) Add(spec NodeSpec) (*Node, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.mu.nodes {
		if n.ID() == spec.ID {
			return nil, fmt.Errorf("cluster: node id %q twice", spec.ID)
		}
	}
	n, err := newNode(c.bin, spec, c.dial)
	if err != nil {
		return nil, err
	}
	c.mu.nodes = append(c.mu.nodes, n)
	return n, nil
}

// Certs returns the nodes' CA (ClusterConfig.Certs), nil for a cluster in
// plain text.
func (c *Cluster) Certs() *Certs { return c.certs }

// Security returns how the Cluster's own connections are secured: TLS
// presenting the operator certificate AdminName of its Certs, or plain
// text for a cluster started insecure. Dial(c.Endpoints(), c.Security())
// makes an Admin that calls as the Cluster does.
func (c *Cluster) Security() Security { return c.sec }

// Nodes returns the nodes, in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.mu.nodes...)
}

// Node returns the node with id, nil if there is none.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes() {
		if n.ID() == id {
			return n
		}
	}
	return nil
}

// Endpoints returns the nodes' client API addresses, in order.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, n := range c.Nodes() {
		out = append(out, n.ClientAddr())
	}
	return out
}

// Start starts every node that is not running, in order, and returns the
// errors of those that could not be started.
func (c *Cluster) Start() error {
	var errs []error
	for _, n := range c.Nodes() {
		if !n.Running() {
			errs = append(errs, n.Start())
		}
	}
	return errors.Join(errs...)
}

// Admin returns an Admin over the nodes as they are now: named by id,
// skipping those not running or paused, its waits cut short by a node down
// after exiting on its own. It owns no connections: closing it is not needed.
func (c *Cluster) Admin() *Admin {
	nodes := c.Nodes()
	a := &Admin{hint: &c.hint, crashed: c.crashed}
	for _, n := range nodes {
		a.targets = append(a.targets, target{name: n.ID(), addr: n.ClientAddr(), api: n.API(), down: n.down})
	}
	return a
}

// Leader returns the node that says it leads in the highest term (one
// Status call per running node, each bounded by StatusTimeout).
func (c *Cluster) Leader(ctx context.Context) (*Node, error) {
	st, err := c.Admin().Leader(ctx, StatusTimeout)
	if err != nil {
		return nil, err
	}
	return c.Node(st.Name), nil
}

// WaitLeader waits until a node leads (Admin.WaitLeader) and returns it.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	st, err := c.Admin().WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	return c.Node(st.Name), nil
}

// crashed returns the exit of the first node that is down because it
// exited on its own.
func (c *Cluster) crashed() (Exit, bool) {
	for _, n := range c.Nodes() {
		if e, ok := n.LastExit(); ok && !e.Expected {
			return e, true
		}
	}
	return Exit{}, false
}

// UnexpectedExits returns every exit of the nodes' processes that the
// runner did not cause, node by node.
func (c *Cluster) UnexpectedExits() []Exit {
	var out []Exit
	for _, n := range c.Nodes() {
		out = append(out, n.UnexpectedExits()...)
	}
	return out
}

// StopAll stops every node at once (Process.Stop with grace) and waits for
// them all.
func (c *Cluster) StopAll(grace time.Duration) error {
	return c.each(func(n *Node) error { return n.Stop(grace) })
}

// KillAll kills every node at once (Process.Kill) and waits for them all.
func (c *Cluster) KillAll() error {
	return c.each((*Node).Kill)
}

func (c *Cluster) each(fn func(*Node) error) error {
	nodes := c.Nodes()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close closes the connections to the nodes. It does not stop them: call
// StopAll or KillAll first.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes() {
		errs = append(errs, n.conn.Close())
	}
	return errors.Join(errs...)
}
