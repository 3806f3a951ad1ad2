package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/internal/pki"
)

// Peer is one member of the static initial cluster.
type Peer struct {
	// ID is the node's id, unique in the cluster.
	ID string
	// RaftAddr is the host:port where the node takes Raft traffic.
	RaftAddr string
}

// Config configures a Node. Start from DefaultConfig; a zero duration or count
// means its default, so a Config built by hand works too. Validate reports
// every problem at once.
type Config struct {
	// ID is this node's id: one of Peers, unique in the cluster, stable across
	// restarts. Required.
	ID string

	// Dir is the data directory: the Raft log and stable store (raft.db) and
	// the snapshots. Created if missing. A restart with the same Dir resumes
	// the node. Required.
	Dir string

	// RaftAddr is the host:port this node binds for Raft traffic and
	// advertises to its peers, so it must be an address they can dial: not
	// 0.0.0.0 or ::. It must equal this node's entry in Peers. Required
	// unless Listener is set; with a Listener it may be empty, and the
	// listener's address is advertised.
	RaftAddr string

	// Listener, if set, is an already bound TCP listener used for Raft
	// traffic instead of binding RaftAddr. The node closes it. Tests use it
	// to take free ports without races; nil (the default) binds RaftAddr.
	Listener net.Listener

	// Peers is the static initial cluster, this node included. Every node
	// must be given the same list. It is used only to bootstrap a node whose
	// Dir holds no Raft state; after that the membership is whatever the
	// replicated configuration says. Required (at least one peer, distinct
	// ids and addresses) unless Gossip is set, which can bootstrap
	// (GossipConfig.BootstrapExpect) or join instead.
	Peers []Peer

	// Gossip, if set, turns membership on: discovery and failure
	// detection over memberlist, joining, bootstrapping from gossip, and
	// the leader's reconcile loop (GossipConfig). Its Keys are the hook
	// for gossip encryption. Default nil: a static cluster, as before.
	Gossip *GossipConfig

	// Replace starts a node whose data directory holds no Raft state as a
	// fresh replacement: it never bootstraps, and starts even though its
	// peers already form a cluster; the leader of that cluster, whose
	// configuration names this node, sends it the log or a snapshot. Without
	// it, such a node refuses to start (ErrStateLost) when it finds that
	// its peers form a cluster or that it ran in this directory before.
	// Use it for a node of a new cluster started after the others elected a
	// leader, or for a node that lost its state, once the cluster has a
	// leader. The node neither votes nor campaigns until it holds every
	// entry committed before it came back (DESIGN.md, "Storage and
	// start-up"). Ignored, with a warning, when the directory holds state.
	// Default false.
	Replace bool

	// ProbeTimeout bounds each step of the probe an empty node makes of
	// its peers before it bootstraps: the dial and the answer, each. Peers
	// are probed at once, so an empty node's Open waits at most about twice
	// this for peers that are down or unreachable. Default 2s; must not be
	// negative.
	ProbeTimeout time.Duration

	// DialAddrs, if set, maps a peer's id to the host:port this node dials
	// to reach it, instead of the RaftAddr the cluster configuration names
	// (raft's ServerAddressProvider). Peers not in the map are dialed at
	// their configured address. The chaos harness uses it to route each
	// directed pair of nodes through its own fault-injecting proxy; a
	// deployment behind NAT could use it too. Default: nil.
	DialAddrs map[string]string

	// TLS, if set, secures Raft with mutual TLS: this node serves and dials
	// with its certificate, peers must present node certificates of the
	// same CA, a dialed peer's certificate must name the node id dialed,
	// and a request whose header claims another sender than its
	// connection's certificate names is refused (DESIGN.md, "Raft over
	// mutual TLS"). The certificate must name this node
	// (spiffe://leasehold/node/<ID>); the files are read again when they
	// change. Default nil: plain TCP, which anyone who reaches RaftAddr
	// can use to rewrite the node's state; cmd makes that an explicit
	// --insecure. (Gossip encryption arrives with memberlist, with its own
	// key: see DESIGN.md.)
	TLS *pki.Source

	// Logger receives the node's logs, and hashicorp/raft's through an hclog
	// adapter. Default (nil): slog.Default().
	Logger *slog.Logger

	// ApplyTimeout bounds how long a write waits to be accepted into the
	// leader's Raft pipeline (raft.Apply's enqueue timeout), and how long a
	// request waits for a new leader to become ready to stamp time. Waiting
	// for the commit itself is bounded by the caller's context. Default 5s;
	// must not be negative.
	ApplyTimeout time.Duration

	// HeartbeatTimeout is how long a follower goes without hearing from the
	// leader before it starts an election (raft.Config.HeartbeatTimeout).
	// Default 500ms, suitable for loopback and a LAN; at least 5ms.
	HeartbeatTimeout time.Duration

	// ElectionTimeout is how long a candidate waits before starting a new
	// election (raft.Config.ElectionTimeout). Default 500ms; at least 5ms and
	// at least HeartbeatTimeout.
	ElectionTimeout time.Duration

	// LeaderLeaseTimeout is how long a leader stays leader without hearing
	// from a quorum (raft.Config.LeaderLeaseTimeout). Default 250ms; at least
	// 5ms and at most HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration

	// CommitTimeout is the longest a follower waits for a heartbeat that
	// carries the commit index when no entries flow
	// (raft.Config.CommitTimeout). Default 50ms; at least 1ms.
	CommitTimeout time.Duration

	// SnapshotThreshold is how many log entries since the last snapshot make
	// the node take a new one (raft.Config.SnapshotThreshold). It bounds the
	// log a restart replays. An entry holds up to 1024 commands (the leader
	// batches writes), so the default 1024 entries is up to about a million
	// commands, about a second of replay; raft's 8192 would be eight. At
	// light load entries hold few commands and the state is small (idle keys
	// are swept), so snapshotting more often per command costs little.
	// Default 1024.
	SnapshotThreshold uint64

	// TrailingLogs is how many entries a snapshot leaves in the log, so a
	// lagging follower catches up from the log instead of a snapshot
	// (raft.Config.TrailingLogs). Counted in batched entries of up to 1024
	// commands: the default 2048 is about 14s of writes at full load (~150
	// entries/s), much longer at light load. It is up to ~2M commands, ~80 MB
	// of typical 40 KiB entries, kept on disk: about three times the snapshot
	// of a 1M-key state (~26 bytes a key), so a follower further behind is
	// better served by the snapshot than by more log. Default 2048.
	TrailingLogs uint64

	// SnapshotInterval is how often the node checks SnapshotThreshold; raft
	// staggers it randomly between 1x and 2x (raft.Config.SnapshotInterval).
	// Under load the log grows past the threshold between checks, so the
	// interval, not the threshold, bounds it: at ~150 entries/s the default
	// 10s lets the log reach 1.5k–3k entries before a snapshot. Checks are
	// cheap, and so is a snapshot for the writes: Apply waits only for the
	// capture (~5 ms at 1M keys), the encoding runs beside it. Default 10s;
	// at least 5ms.
	SnapshotInterval time.Duration

	// Metrics, if set, receives the node's Prometheus metrics (leasehold_*:
	// decisions, tokens, latencies, snapshots, disk checks, Raft indexes;
	// DESIGN.md lists them). Raft's own are bridged separately, once per
	// process: RegisterRaftMetrics. Default nil: no metrics.
	Metrics prometheus.Registerer

	// DiskCheckInterval is how often the node checks that its disk takes
	// writes: it writes, fsyncs and removes a 4 KiB file in Dir. A failed
	// check makes the node not ready (Health, Ready) and counts in
	// leasehold_disk_errors_total until one succeeds. Default 5s; at least
	// 10ms.
	DiskCheckInterval time.Duration

	// MaxKeys is the most keys the state machine may hold before the
	// leader refuses a request that would add one: an Acquire, Charge or
	// Restrict naming a key it does not hold gets transport.ErrFull, and
	// nothing enters the log. Keys it holds are always served, and SetLimit
	// (an operator's) is not capped. The check is the leader's, before the
	// log, so the cap is soft by the commands in flight (DESIGN.md, "Caps
	// on keys and sessions"); set the same value on every node. Default
	// 2,000,000: about 1.1 GB of token-bucket keys at the longest key (512
	// bytes). At least 1.
	MaxKeys int

	// MaxSessions is the most client sessions (the dedup tables of the
	// client_ids heard from in the last fsm.SessionTTL) the state machine
	// may hold before the leader refuses a command from a client_id it has
	// none for, as MaxKeys does; a client_id it holds is always served.
	// Default 20,000: 7 MB at a few results a session, 1.6 GB if each held
	// the 256 unacknowledged results of 8 keys a session may. At least 1.
	MaxSessions int

	// diskWrite replaces the disk check's write in tests: nil writes the
	// probe file.
	diskWrite func(dir string) error
	// noActivity turns the per-key activity off: the benchmarks' baseline.
	noActivity bool
	// wrapTransport, when set, wraps the node's Raft transport in tests
	// (a partition that drops RPCs to chosen peers).
	wrapTransport func(raftTransport) raftTransport

	// Monotonic is the monotonic clock the leader stamps log time with
	// (DESIGN.md invariant 1): it only has to advance at the rate of real
	// time, its origin does not matter, and it is never compared across
	// nodes. Default (nil): time since process start on Go's monotonic clock,
	// immune to wall-clock jumps. This is the hook for a test-only clock
	// knob. It must be safe for concurrent use.
	Monotonic func() time.Duration
}

// Defaults of the Config fields.
const (
	DefaultApplyTimeout       = 5 * time.Second
	DefaultHeartbeatTimeout   = 500 * time.Millisecond
	DefaultElectionTimeout    = 500 * time.Millisecond
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
	DefaultCommitTimeout      = 50 * time.Millisecond
	DefaultSnapshotThreshold  = 1024
	DefaultTrailingLogs       = 2048
	DefaultSnapshotInterval   = 10 * time.Second
	DefaultProbeTimeout       = 2 * time.Second
	DefaultDiskCheckInterval  = 5 * time.Second
	DefaultMaxKeys            = 2_000_000
	DefaultMaxSessions        = 20_000
)

// processStart is the origin of the default Monotonic clock. time.Since of a
// time.Now reading uses Go's monotonic clock, so a wall-clock step changes
// nothing.
var processStart = time.Now()

func sinceProcessStart() time.Duration { return time.Since(processStart) }

// DefaultConfig returns a Config with every default filled in; the caller
// sets ID, Dir, RaftAddr and Peers.
func DefaultConfig() Config {
	return Config{
		Logger:             slog.Default(),
		ApplyTimeout:       DefaultApplyTimeout,
		HeartbeatTimeout:   DefaultHeartbeatTimeout,
		ElectionTimeout:    DefaultElectionTimeout,
		LeaderLeaseTimeout: DefaultLeaderLeaseTimeout,
		CommitTimeout:      DefaultCommitTimeout,
		SnapshotThreshold:  DefaultSnapshotThreshold,
		TrailingLogs:       DefaultTrailingLogs,
		SnapshotInterval:   DefaultSnapshotInterval,
		ProbeTimeout:       DefaultProbeTimeout,
		DiskCheckInterval:  DefaultDiskCheckInterval,
		MaxKeys:            DefaultMaxKeys,
		MaxSessions:        DefaultMaxSessions,
		Monotonic:          sinceProcessStart,
	}
}

// withDefaults returns c with every zero field that has a default set to it.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Monotonic == nil {
		c.Monotonic = d.Monotonic
	}
	setDefault(&c.ApplyTimeout, d.ApplyTimeout)
	setDefault(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	setDefault(&c.ElectionTimeout, d.ElectionTimeout)
	setDefault(&c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	setDefault(&c.CommitTimeout, d.CommitTimeout)
	setDefault(&c.SnapshotThreshold, d.SnapshotThreshold)
	setDefault(&c.TrailingLogs, d.TrailingLogs)
	setDefault(&c.SnapshotInterval, d.SnapshotInterval)
	setDefault(&c.ProbeTimeout, d.ProbeTimeout)
	setDefault(&c.DiskCheckInterval, d.DiskCheckInterval)
	setDefault(&c.MaxKeys, d.MaxKeys)
	setDefault(&c.MaxSessions, d.MaxSessions)
	if c.diskWrite == nil {
		c.diskWrite = writeProbe
	}
	if c.Gossip != nil {
		g := c.Gossip.withDefaults()
		c.Gossip = &g
	}
	return c
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// advertiseAddr is the Raft address this node gives its peers: RaftAddr, or
// the Listener's address when RaftAddr is empty.
func (c *Config) advertiseAddr() string {
	if c.RaftAddr == "" && c.Listener != nil {
		return c.Listener.Addr().String()
	}
	return c.RaftAddr
}

// Validate reports every problem with c at once, joined with errors.Join, or
// nil. Zero durations and counts are valid: they mean their defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("cluster config: "+format, args...))
	}

	if c.ID == "" {
		bad("ID is empty; give this node an id, one of Peers")
	}
	if c.Dir == "" {
		bad("Dir is empty; give the node a data directory")
	}
	advertise := c.advertiseAddr()
	switch {
	case advertise == "":
		bad("RaftAddr is empty; give the host:port peers reach this node at")
	default:
		if err := checkDialable(advertise); err != nil {
			bad("RaftAddr %q: %v", advertise, err)
		}
	}

	for _, id := range slices.Sorted(maps.Keys(c.DialAddrs)) {
		if err := checkDialable(c.DialAddrs[id]); err != nil {
			bad("DialAddrs[%q] %q: %v", id, c.DialAddrs[id], err)
		}
	}

	if len(c.Peers) == 0 && c.Gossip == nil {
		bad("Peers is empty; list every node of the initial cluster, this one included")
	}
	if c.Gossip != nil {
		errs = append(errs, c.Gossip.validate(c.TLS != nil, len(c.Peers) > 0)...)
	}
	ids := make(map[string]bool, len(c.Peers))
	addrs := make(map[string]bool, len(c.Peers))
	self := false
	for i, p := range c.Peers {
		switch {
		case p.ID == "":
			bad("Peers[%d] has an empty ID", i)
		case ids[p.ID]:
			bad("Peers[%d]: ID %q is listed twice", i, p.ID)
		}
		ids[p.ID] = true
		if err := checkDialable(p.RaftAddr); err != nil {
			bad("Peers[%d] (%q): RaftAddr %q: %v", i, p.ID, p.RaftAddr, err)
		} else if addrs[p.RaftAddr] {
			bad("Peers[%d] (%q): RaftAddr %q is listed twice", i, p.ID, p.RaftAddr)
		}
		addrs[p.RaftAddr] = true
		if p.ID == c.ID && c.ID != "" {
			self = true
			if advertise != "" && p.RaftAddr != advertise {
				bad("Peers lists this node (%q) at %q but RaftAddr is %q", p.ID, p.RaftAddr, advertise)
			}
		}
	}
	if c.ID != "" && len(c.Peers) > 0 && !self {
		bad("Peers does not list this node's ID %q", c.ID)
	}
	if c.TLS != nil {
		switch id := c.TLS.Identity(); {
		case id.Role != pki.RoleNode:
			bad("TLS certificate is %s's; a node needs a node certificate", id)
		case id.Name != c.ID:
			bad("TLS certificate names node %q but ID is %q; issue one for %q", id.Name, c.ID, c.ID)
		}
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ApplyTimeout", c.ApplyTimeout},
		{"HeartbeatTimeout", c.HeartbeatTimeout},
		{"ElectionTimeout", c.ElectionTimeout},
		{"LeaderLeaseTimeout", c.LeaderLeaseTimeout},
		{"CommitTimeout", c.CommitTimeout},
		{"SnapshotInterval", c.SnapshotInterval},
		{"ProbeTimeout", c.ProbeTimeout},
		{"DiskCheckInterval", c.DiskCheckInterval},
	} {
		if d.v < 0 {
			bad("%s is %v; it must not be negative (0 means the default)", d.name, d.v)
		}
	}
	if c.MaxKeys < 0 {
		bad("MaxKeys is %d; it must not be negative (0 means the default, %d)", c.MaxKeys, DefaultMaxKeys)
	}
	if c.MaxSessions < 0 {
		bad("MaxSessions is %d; it must not be negative (0 means the default, %d)", c.MaxSessions, DefaultMaxSessions)
	}
	// Raft's own constraints, checked on the values that will be used.
	e := c.withDefaults()
	const minTimeout = 5 * time.Millisecond
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HeartbeatTimeout", e.HeartbeatTimeout},
		{"ElectionTimeout", e.ElectionTimeout},
		{"LeaderLeaseTimeout", e.LeaderLeaseTimeout},
		{"SnapshotInterval", e.SnapshotInterval},
	} {
		if d.v > 0 && d.v < minTimeout {
			bad("%s is %v; it must be at least %v", d.name, d.v, minTimeout)
		}
	}
	if e.DiskCheckInterval > 0 && e.DiskCheckInterval < 10*time.Millisecond {
		bad("DiskCheckInterval is %v; it must be at least 10ms", e.DiskCheckInterval)
	}
	if e.CommitTimeout > 0 && e.CommitTimeout < time.Millisecond {
		bad("CommitTimeout is %v; it must be at least 1ms", e.CommitTimeout)
	}
	if e.ElectionTimeout < e.HeartbeatTimeout {
		bad("ElectionTimeout %v is below HeartbeatTimeout %v", e.ElectionTimeout, e.HeartbeatTimeout)
	}
	if e.LeaderLeaseTimeout > e.HeartbeatTimeout {
		bad("LeaderLeaseTimeout %v is above HeartbeatTimeout %v", e.LeaderLeaseTimeout, e.HeartbeatTimeout)
	}
	return errors.Join(errs...)
}

// checkDialable checks that addr is a host:port a peer can dial.
func checkDialable(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host; peers need one to dial")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return errors.New("an unspecified address cannot be dialed by peers")
	}
	if port == "" || port == "0" {
		return errors.New("no port; peers need a fixed one")
	}
	return nil
}
