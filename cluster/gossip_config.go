package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// GossipConfig turns membership on: the node gossips with hashicorp/
// memberlist (discovery and failure detection), and its leader runs the
// reconcile loop (hashicorp/raft-autopilot) that adds new nodes as
// non-voters, promotes them once healthy, and removes dead voters after
// DeadServerTimeout within failure tolerance. The Raft configuration stays
// the authority; gossip only informs it (DESIGN.md, "Membership"). Zero
// durations and counts mean their defaults.
type GossipConfig struct {
	// BindAddr is the host:port memberlist binds, TCP and UDP. Required.
	BindAddr string

	// AdvertiseAddr is the host:port other members reach this node's
	// gossip at; "" means BindAddr, which then must not be 0.0.0.0.
	AdvertiseAddr string

	// Join are gossip addresses of members to join (seeds), retried with
	// backoff. A node with no Raft state (it joins, or bootstraps) waits in
	// Open until one answers, for up to JoinTimeout, then fails; a node
	// with state joins in the background and keeps trying, since it takes
	// part through Raft meanwhile. Seeds that are this node are skipped, so
	// every node of a cluster may be given the same list, on every start.
	// Empty: join no one (the first node, or one that others join).
	Join []string

	// BootstrapExpect, if above 0, bootstraps a new cluster: a node whose
	// data directory is empty waits until exactly this many fresh nodes
	// with the same ClusterName and BootstrapExpect have met in gossip
	// (and none of them has Raft state), then bootstraps them all as
	// voters. It never bootstraps twice, and never when a member already
	// has Raft state (it joins instead). Nodes with a different non-zero
	// BootstrapExpect are not admitted. Excludes Config.Peers. Default 0:
	// never bootstrap; an empty node waits for the leader to add it.
	BootstrapExpect int

	// ClusterName is the cluster's name; a member with another name is not
	// admitted. Default "leasehold".
	ClusterName string

	// Keys is the gossip keyring: AES keys of 16, 24 or 32 bytes, the
	// first one used to encrypt, every one tried to decrypt (so a new key
	// can be rolled in). This is the hook for gossip encryption: with
	// Config.TLS set, a Keys-less GossipConfig is refused unless Insecure.
	Keys [][]byte

	// Insecure allows gossip without Keys while Raft runs over TLS:
	// anyone who reaches BindAddr can then read and forge membership
	// messages. Default false.
	Insecure bool

	// ClientAddr and HTTPAddr are this node's client API (gRPC) and HTTP
	// addresses, gossiped so that followers can name the leader's
	// (NotLeader) and a console can link to it: addresses other machines
	// dial, so not 0.0.0.0 or ::. Optional.
	ClientAddr, HTTPAddr string

	// NonVoter asks the leader never to promote this node: it replicates
	// the log but does not vote. Default false (a voter once healthy).
	NonVoter bool

	// Version is gossiped and shown by Members. Optional; at most 64 bytes.
	Version string

	// JoinTimeout bounds how long an empty node's Open tries the Join
	// seeds (and each background round of a node with state). Default 60s.
	JoinTimeout time.Duration

	// DeadServerTimeout is how long a voter must have been dead (failed in
	// gossip, or never seen) in the leader's eyes before the leader
	// removes it, and then only within failure tolerance. A member that
	// left gossip gracefully is removed at once. Default 24h: a machine
	// that comes back within a day keeps its place. At least 1s.
	DeadServerTimeout time.Duration

	// StabilizationTime is how long a new node must stay healthy (alive,
	// in touch with the leader, caught up) before the leader promotes it
	// to voter. Default 10s.
	StabilizationTime time.Duration

	// LastContactThreshold is how long a member may go without hearing
	// from the leader (as it reports in gossip) and still count as
	// healthy. Default 5s.
	LastContactThreshold time.Duration

	// MaxTrailingLogs is how many log entries a member may lag the leader
	// and still count as healthy. Entries are batches of up to 1024
	// commands. Default 256.
	MaxTrailingLogs uint64

	// UpdateInterval is how often a node gossips its log index and
	// contact (and at once when a new leader's first entry reaches it);
	// the leader recomputes members' health four times as often. Default
	// 1s.
	UpdateInterval time.Duration

	// ReconcileInterval is how often the leader reconciles the Raft
	// configuration with gossip (adds, promotions, removals); gossip
	// events trigger it too. Default 2s.
	ReconcileInterval time.Duration

	// holdGate, when set and true, keeps a fresh node's vote gate shut
	// though it has been added: tests stand for a node slow to see itself
	// added with it.
	holdGate *atomic.Bool

	// onSend, when set, is called with each message this node sends over
	// gossip: tests record what an eavesdropper with the key would.
	onSend func(to string, msg gossipMsg)

	// tuneMemberlist, when set, adjusts memberlist's configuration last
	// before it starts: tests stand for a network that loses packets with
	// it (its transport) and for memberlist's rare full syncs (its
	// push-pull interval).
	tuneMemberlist func(*memberlist.Config)
}

// Defaults of the GossipConfig fields.
const (
	DefaultClusterName          = "leasehold"
	DefaultJoinTimeout          = 60 * time.Second
	DefaultDeadServerTimeout    = 24 * time.Hour
	DefaultStabilizationTime    = 10 * time.Second
	DefaultLastContactThreshold = 5 * time.Second
	DefaultMaxTrailingLogs      = 256
	DefaultUpdateInterval       = time.Second
	DefaultReconcileInterval    = 2 * time.Second
)

func (c GossipConfig) withDefaults() GossipConfig {
	setDefault(&c.ClusterName, DefaultClusterName)
	setDefault(&c.JoinTimeout, DefaultJoinTimeout)
	setDefault(&c.DeadServerTimeout, DefaultDeadServerTimeout)
	setDefault(&c.StabilizationTime, DefaultStabilizationTime)
	setDefault(&c.LastContactThreshold, DefaultLastContactThreshold)
	setDefault(&c.MaxTrailingLogs, DefaultMaxTrailingLogs)
	setDefault(&c.UpdateInterval, DefaultUpdateInterval)
	setDefault(&c.ReconcileInterval, DefaultReconcileInterval)
	return c
}

// maxVersionLen bounds GossipConfig.Version: a member's metadata, which
// carries it, must fit memberlist's 512 bytes with its addresses and stats.
const maxVersionLen = 64

// validate reports every problem with c; tls says whether Raft runs over
// TLS, staticPeers whether Config.Peers is set.
func (c GossipConfig) validate(tls, staticPeers bool) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("cluster config: Gossip."+format, args...))
	}
	adv := c.AdvertiseAddr
	if adv == "" {
		adv = c.BindAddr
	}
	if c.BindAddr == "" {
		bad("BindAddr is empty; give the host:port to gossip on")
	} else if _, _, err := splitHostPort(c.BindAddr); err != nil {
		bad("BindAddr %q: %v", c.BindAddr, err)
	} else if err := checkDialable(adv); err != nil {
		bad("AdvertiseAddr %q (or BindAddr): %v", adv, err)
	}
	for _, a := range []struct{ name, addr string }{{"ClientAddr", c.ClientAddr}, {"HTTPAddr", c.HTTPAddr}} {
		if a.addr == "" {
			continue
		}
		if host, _, err := net.SplitHostPort(a.addr); err != nil {
			bad("%s %q: %v", a.name, a.addr, err)
		} else if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			// Followers hand it out (NotLeader), where it would name the
			// caller's own machine.
			bad("%s %q: an unspecified host cannot be dialed by other machines; give the host they reach this node at", a.name, a.addr)
		}
	}
	for i, s := range c.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			bad("Join[%d] %q: %v", i, s, err)
		}
	}
	if c.BootstrapExpect < 0 {
		bad("BootstrapExpect is %d; it must not be negative", c.BootstrapExpect)
	}
	if c.BootstrapExpect > 0 && staticPeers {
		bad("BootstrapExpect and Peers exclude each other: bootstrap from gossip or from a static list, not both")
	}
	for i, k := range c.Keys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			bad("Keys[%d] is %d bytes; a gossip key is 16, 24 or 32 bytes", i, n)
		}
	}
	if tls && len(c.Keys) == 0 && !c.Insecure {
		bad("Keys is empty while Raft runs over TLS: give a gossip key, or set Insecure to gossip in plain text")
	}
	if n := len(c.Version); n > maxVersionLen {
		bad("Version is %d bytes; at most %d fit in the member's gossiped metadata", n, maxVersionLen)
	}
	if c.DeadServerTimeout != 0 && c.DeadServerTimeout < time.Second {
		bad("DeadServerTimeout is %v; it must be at least 1s", c.DeadServerTimeout)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"JoinTimeout", c.JoinTimeout}, {"StabilizationTime", c.StabilizationTime},
		{"LastContactThreshold", c.LastContactThreshold}, {"UpdateInterval", c.UpdateInterval},
		{"ReconcileInterval", c.ReconcileInterval},
	} {
		if d.v < 0 {
			bad("%s is %v; it must not be negative (0 means the default)", d.name, d.v)
		}
	}
	return errs
}

// ErrRemoved is the kind of the StateError Open returns for a data
// directory whose node was removed from its cluster: starting it again
// under the same state would only be refused by the others.
var ErrRemoved = errors.New("node was removed from its cluster")
