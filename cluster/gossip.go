package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// memberMeta is what a node gossips about itself (memberlist's node meta,
// at most 512 bytes of JSON): who it is, where to reach it, what it asks
// for, and how far its log has come. The gossip name is the node id.
type memberMeta struct {
	Cluster  string `json:"c"`           // GossipConfig.ClusterName
	Expect   int    `json:"e,omitempty"` // GossipConfig.BootstrapExpect
	Raft     string `json:"r"`           // Raft address
	Client   string `json:"g,omitempty"` // client API (gRPC) address
	HTTP     string `json:"h,omitempty"` // HTTP address
	NonVoter bool   `json:"nv,omitempty"`
	Version  string `json:"v,omitempty"`
	// Level is the command level the node's build applies (commandLevel):
	// the leader sends a command field only once every server of the
	// configuration gossips a level that knows it. Absent (a build that
	// predates levels): 0.
	Level int `json:"cl,omitempty"`
	// Fresh: the node started with no Raft state and waits to be added
	// by the leader (a join, or a replacement); it never bootstraps.
	Fresh bool `json:"f,omitempty"`
	// Removed: the node learned it was removed and takes no part any more.
	Removed bool `json:"x,omitempty"`
	// Life is random, drawn when the node's process starts: it tells this
	// run of a node from an earlier or later one under the same id (a
	// fresh node an operator removed, against the same id wiped and
	// started again). A removal notice naming it is for this run alone.
	Life string `json:"lf,omitempty"`
	// Leaving: the node is about to leave gossip on purpose, so its
	// departure reads as left, not dead (memberlist's leave event does not
	// say which).
	Leaving bool `json:"lv,omitempty"`
	// Stats, refreshed every GossipConfig.UpdateInterval: the node's last
	// log index and term, and how long ago it last heard from a leader
	// (milliseconds; -1 if never).
	LastIndex     uint64 `json:"li,omitempty"`
	LastTerm      uint64 `json:"lt,omitempty"`
	LastContactMs int64  `json:"lc"`
	// Stable, gossiped by the leader alone, is how long (milliseconds,
	// rounded down to 100) it has found each non-voter waiting for its
	// promotion healthy at every round: the next leader carries that over
	// (membership.NotifyState), so that elections do not restart the
	// count. As many as fit in the meta, longest first.
	Stable map[string]int64 `json:"st,omitempty"`
}

// memberInfo is one gossip member as this node knows it.
type memberInfo struct {
	id      string
	addr    string // gossip host:port
	state   memberlist.NodeStateType
	meta    memberMeta
	metaOK  bool      // meta decoded
	updated time.Time // when this node last received the member's state
}

// message kinds sent node to node over gossip (memberlist's reliable
// send), as a kind byte and a JSON body.
const (
	msgLeave   byte = 'L' // a member asks the leader to remove it
	msgRemoved byte = 'R' // the leader tells a member it is not in the configuration
)

// gossipMsg is a message's body.
type gossipMsg struct {
	kind   byte
	ID     string `json:"id"`               // the member concerned
	From   string `json:"from"`             // the sender's id
	Term   uint64 `json:"term,omitempty"`   // msgRemoved: the leader's term
	Index  uint64 `json:"index,omitempty"`  // the configuration's index (msgRemoved: the leader's; msgLeave: the sender's latest)
	Leader string `json:"leader,omitempty"` // msgRemoved: the leader's client address
	// msgRemoved: the member's gossiped Life when it was removed, if it
	// gossiped one; a fresh node believes a notice naming its own even
	// before its vote gate opens (membership.handle).
	Life string `json:"life,omitempty"`

	// With TLS, the sender's certificate chain (DER, leaf first) and its
	// signature over signedBytes: the gossip key lets a holder send
	// messages, not speak for a node (membership.verify).
	Chain [][]byte `json:"chain,omitempty"`
	Sig   []byte   `json:"sig,omitempty"`
}

// signedBytes is what a message's signature covers: its kind and its JSON
// body without the chain and signature.
func (msg gossipMsg) signedBytes() ([]byte, error) {
	msg.Chain, msg.Sig = nil, nil
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return append([]byte{msg.kind}, body...), nil
}

// gossip is this node's memberlist and what it learned from it. Its
// delegate methods are called by memberlist's goroutines; it is safe for
// concurrent use.
type gossip struct {
	cfg  GossipConfig
	self string
	log  *slog.Logger
	ml   *memberlist.Memberlist
	tr   *cappedTransport // ml's
	meta atomic.Pointer[memberMeta]
	// metaMu serializes setMeta: the membership loop's stats and a leave
	// or removal on another goroutine each change a field of meta, and one
	// stored over the other undid it; and memberlist's UpdateNode reads
	// the node's address while another call of it writes it (-race).
	metaMu sync.Mutex

	mu struct {
		sync.Mutex
		members map[string]*memberInfo
		// conflicts are the Raft addresses members' ids were last
		// gossiped at from a gossip address other than the one memberlist
		// holds for the id, by id: a node that moved, before memberlist
		// gives its name the new address (once the old one is declared
		// dead, ~5-30 s). Claims like any gossip (routeMembers proves
		// them); at most one per name memberlist knows.
		conflicts map[string]conflictSeen
	}
	msgs    chan gossipMsg // received messages, for the node's loop
	changed chan struct{}  // a member joined, left or changed (capacity 1)
}

// startGossip creates this node's memberlist, bound to cfg.BindAddr, with
// meta as its first meta. It does not join anyone (join does).
func startGossip(cfg GossipConfig, id string, meta memberMeta, logger *slog.Logger) (*gossip, error) {
	g := &gossip{cfg: cfg, self: id, log: logger.With("part", "gossip"),
		msgs: make(chan gossipMsg, 64), changed: make(chan struct{}, 1)}
	g.mu.members = make(map[string]*memberInfo)
	g.mu.conflicts = make(map[string]conflictSeen)
	g.meta.Store(&meta)

	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip: bind address %q: %w", cfg.BindAddr, err)
	}
	mc := memberlist.DefaultLANConfig()
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = id
	mc.BindAddr, mc.BindPort = host, port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip: advertise address %q: %w", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	// The same id at a new address takes its name back once the old
	// address has been declared dead: an id, not an address, is the member.
	mc.DeadNodeReclaimTime = time.Second
	mc.Delegate = g
	mc.Events = g
	mc.Alive = g
	mc.Merge = g
	mc.Conflict = g
	mc.Logger = newHCLog(logger, "memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	// memberlist's own transport, with its incoming streams capped
	// (gossipcap.go); mc.BindPort is the port it bound (0 asks for one).
	tr, err := newCappedTransport(host, port, maxGossipStreams, g.log, mc.Logger)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	if port == 0 {
		mc.BindPort = tr.GetAutoBindPort()
		if mc.AdvertiseAddr == "" {
			mc.AdvertisePort = mc.BindPort
		}
	}
	mc.Transport = tr
	if cfg.tuneMemberlist != nil {
		cfg.tuneMemberlist(mc)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	g.ml, g.tr = ml, tr
	return g, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// addr returns the gossip address this node advertises: AdvertiseAddr,
// or BindAddr.
func (g *gossip) addr() string {
	if g.cfg.AdvertiseAddr != "" {
		return g.cfg.AdvertiseAddr
	}
	return g.cfg.BindAddr
}

// join joins the seeds (gossip host:port), retrying with backoff (200ms
// doubling up to 5s) until one answers, ctx ends, or cfg.JoinTimeout
// passes: then an error naming the last failure. Seeds that are this node
// are skipped; with none left it returns nil at once. Joining a cluster
// this node is already in is harmless, so the same seeds serve every
// restart.
func (g *gossip) join(ctx context.Context) error {
	self := g.addr()
	var seeds []string
	for _, s := range g.cfg.Join {
		if s != self && s != g.cfg.BindAddr && s != g.cfg.AdvertiseAddr {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) == 0 {
		return nil
	}
	deadline := time.Now().Add(g.cfg.JoinTimeout)
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		n, err := g.ml.Join(seeds)
		if n > 0 {
			g.log.Info("joined gossip", "seeds", seeds, "answered", n, "members", g.ml.NumMembers())
			return nil
		}
		if err == nil {
			err = errors.New("no seed answered")
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("join %v: no seed answered within %v (%d attempts): %w", seeds, g.cfg.JoinTimeout, attempt, err)
		}
		g.log.Debug("join: no seed answered yet; retrying", "seeds", seeds, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("join %v: %w (last: %v)", seeds, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// setMeta changes this node's meta and gossips it (bounded by timeout).
// Calls are serialized, each changing the meta as the one before left it.
func (g *gossip) setMeta(fn func(*memberMeta), timeout time.Duration) error {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	old := g.meta.Load()
	m := *old
	fn(&m)
	if reflect.DeepEqual(*old, m) {
		return nil
	}
	g.meta.Store(&m)
	return g.ml.UpdateNode(timeout)
}

// pull exchanges this node's whole gossip state with the members at addrs
// (gossip host:port), one at a time, over TCP: memberlist's push-pull,
// which it otherwise runs with one random member every 15-30 s. It returns
// an error only if none answered.
func (g *gossip) pull(addrs []string) error {
	if _, err := g.ml.Join(addrs); err != nil {
		return fmt.Errorf("gossip: push-pull with %v: %w", addrs, err)
	}
	return nil
}

// leave tells the other members this node leaves (bounded by timeout) and
// stops gossip: first a meta saying so, then memberlist's leave.
func (g *gossip) leave(timeout time.Duration) error {
	err := g.setMeta(func(m *memberMeta) { m.Leaving = true }, timeout)
	err = errors.Join(err, g.ml.Leave(timeout))
	return errors.Join(err, g.ml.Shutdown())
}

// shutdown stops gossip without telling anyone (the others find the node
// dead).
func (g *gossip) shutdown() error { return g.ml.Shutdown() }

// members returns every member known, this node included, sorted by id.
func (g *gossip) members() []memberInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]memberInfo, 0, len(g.mu.members))
	for _, m := range g.mu.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b memberInfo) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return out
}

// conflictSeen is a Raft address gossiped for a member from a gossip
// address memberlist refused for its name, and when.
type conflictSeen struct {
	raft string
	at   time.Time
}

// conflictMemory is how long a conflicting Raft address is remembered.
const conflictMemory = time.Minute

// conflict returns the Raft address id was last gossiped at in a
// conflict, if within conflictMemory.
func (g *gossip) conflict(id string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.mu.conflicts[id]
	if !ok || time.Since(c.at) > conflictMemory {
		return "", false
	}
	return c.raft, true
}

// NotifyConflict implements memberlist.ConflictDelegate: a member's name
// is gossiped from another address than memberlist holds for it (memberlist
// logs it, and keeps the address it has). The new one's Raft address, if
// its meta is admitted, is kept as a claim. Called on memberlist's
// goroutines, under its state lock: it only records.
func (g *gossip) NotifyConflict(existing, other *memberlist.Node) {
	if other.Name == g.self || g.admit(other) != nil {
		return
	}
	var m memberMeta
	if json.Unmarshal(other.Meta, &m) != nil || m.Raft == "" {
		return
	}
	g.mu.Lock()
	_, known := g.mu.members[other.Name]
	if known {
		g.mu.conflicts[other.Name] = conflictSeen{raft: m.Raft, at: time.Now()}
	}
	for id, c := range g.mu.conflicts {
		if _, ok := g.mu.members[id]; !ok || time.Since(c.at) > conflictMemory {
			delete(g.mu.conflicts, id)
		}
	}
	g.mu.Unlock()
	if known {
		select {
		case g.changed <- struct{}{}:
		default:
		}
	}
}

// member returns what gossip knows of id.
func (g *gossip) member(id string) (memberInfo, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.mu.members[id]
	if !ok {
		return memberInfo{}, false
	}
	return *m, true
}

// send sends msg to member id over TCP (memberlist's reliable send).
//
// The address is the one gossip's events reported (record), not a
// *memberlist.Node from Members(): those point into memberlist's own state,
// which its packet handler rewrites under a lock the caller cannot take, so
// reading them races (TestStaleNodeDoesNotDisrupt under -race).
func (g *gossip) send(id string, msg gossipMsg) error {
	m, ok := g.member(id)
	if !ok || m.state != memberlist.StateAlive {
		return fmt.Errorf("gossip: %s is not an alive member", id)
	}
	host, port, err := net.SplitHostPort(m.addr)
	if err != nil {
		return fmt.Errorf("gossip: %s's address %q: %w", id, m.addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("gossip: %s's address %q: %w", id, m.addr, err)
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if g.cfg.onSend != nil {
		g.cfg.onSend(id, msg)
	}
	to := &memberlist.Node{Name: id, Addr: net.ParseIP(host), Port: uint16(p)}
	return g.ml.SendReliable(to, append([]byte{msg.kind}, body...))
}

// record stores n's state as an event reported it: alive on a join or an
// update; on a leave, left if its last meta said it was leaving, else dead
// (memberlist does not keep n.State current in its events).
func (g *gossip) record(n *memberlist.Node, left bool) {
	info := &memberInfo{id: n.Name, addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		state: memberlist.StateAlive, updated: time.Now()}
	info.metaOK = json.Unmarshal(n.Meta, &info.meta) == nil
	if left {
		info.state = memberlist.StateDead
		if info.meta.Leaving || info.meta.Removed {
			info.state = memberlist.StateLeft
		}
	}
	g.mu.Lock()
	g.mu.members[n.Name] = info
	// Forget members gone for a day (churn would otherwise grow the map
	// for ever); memberlist itself reaps them sooner.
	for id, m := range g.mu.members {
		if m.state != memberlist.StateAlive && time.Since(m.updated) > 24*time.Hour {
			delete(g.mu.members, id)
		}
	}
	g.mu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// admit decides whether gossip takes a member in: its meta must be within
// memberlist's size limit, decode, name this cluster, and, when both ask a bootstrap, the same expected
// size. memberlist refuses the member's alive message or the merge of its
// state on an error, so it is never seen (DESIGN.md, "Membership").
func (g *gossip) admit(n *memberlist.Node) error {
	// memberlist bounds the meta a node sends, not what it receives.
	if len(n.Meta) > memberlist.MetaMaxSize {
		return fmt.Errorf("member %q gossips %d bytes of meta, over memberlist's limit of %d", n.Name, len(n.Meta), memberlist.MetaMaxSize)
	}
	var m memberMeta
	if err := json.Unmarshal(n.Meta, &m); err != nil {
		return fmt.Errorf("member %q gossips meta that is not Leasehold's: %w", n.Name, err)
	}
	self := g.meta.Load()
	if m.Cluster != self.Cluster {
		return fmt.Errorf("member %q belongs to cluster %q, not %q", n.Name, m.Cluster, self.Cluster)
	}
	if m.Expect > 0 && self.Expect > 0 && m.Expect != self.Expect {
		return fmt.Errorf("member %q expects a bootstrap of %d nodes, this node of %d", n.Name, m.Expect, self.Expect)
	}
	return nil
}

// memberlist.Delegate.

func (g *gossip) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(g.meta.Load())
	if len(b) > limit {
		g.log.Error("node meta too large for gossip; sending none", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

func (g *gossip) NotifyMsg(b []byte) {
	if len(b) < 2 {
		return
	}
	msg := gossipMsg{kind: b[0]}
	if err := json.Unmarshal(b[1:], &msg); err != nil {
		g.log.Warn("gossip: a message that does not decode", "err", err)
		return
	}
	select {
	case g.msgs <- msg:
	default:
		g.log.Warn("gossip: message queue full; dropped one", "kind", string(msg.kind), "from", msg.From)
	}
}

func (g *gossip) GetBroadcasts(int, int) [][]byte { return nil }
func (g *gossip) LocalState(bool) []byte          { return nil }
func (g *gossip) MergeRemoteState([]byte, bool)   {}
func (g *gossip) NotifyJoin(n *memberlist.Node)   { g.record(n, false) }
func (g *gossip) NotifyLeave(n *memberlist.Node)  { g.record(n, true) }
func (g *gossip) NotifyUpdate(n *memberlist.Node) { g.record(n, false) }
func (g *gossip) NotifyAlive(n *memberlist.Node) error {
	if err := g.admit(n); err != nil {
		g.log.Warn("gossip: member not admitted", "member", n.Name, "err", err)
		return err
	}
	return nil
}

func (g *gossip) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if err := g.admit(n); err != nil {
			g.log.Warn("gossip: refused to merge with another cluster", "member", n.Name, "err", err)
			return err
		}
	}
	return nil
}
