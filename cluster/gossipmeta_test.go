package cluster

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// The attacks here hold the gossip key and no node certificate, and speak
// memberlist's own wire format: an alive (or dead) message about another
// node, encrypted with the key, in one UDP packet. memberlist takes the
// highest incarnation it has seen, and a node refuting one about itself
// answers with the accused incarnation plus one, which wraps to 0 at
// math.MaxUint32: a forged alive at that incarnation is never refuted.

// memberlist's message types (net.go: pingMsg is 0, counting up).
const (
	mlAliveMsg byte = 4
	mlDeadMsg  byte = 5
)

// mlAlive and mlDead are memberlist's alive and dead messages, field for
// field (net.go); the codec encodes a struct as a map of its field names.
type mlAlive struct {
	Incarnation uint32
	Node        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Vsn         []uint8
}

type mlDead struct {
	Incarnation uint32
	Node        string
	From        string
}

// forgePacket sends one memberlist message of kind to the gossip address
// to over UDP, encrypted with key as memberlist does (version 1: a
// version byte, a 12-byte nonce, AES-GCM with the empty label as
// additional data).
func forgePacket(t *testing.T, key []byte, to string, kind byte, msg any) {
	t.Helper()
	var plain bytes.Buffer
	plain.WriteByte(kind)
	if err := codec.NewEncoder(&plain, &codec.MsgpackHandle{}).Encode(msg); err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	pkt := append([]byte{1}, nonce...)
	pkt = gcm.Seal(pkt, nonce, plain.Bytes(), nil)
	c, err := net.Dial("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
}

// forgeAlive tells the node at gossip address to that member id is alive at its gossip address
// gossipAddr with meta, at the highest incarnation there is.
func forgeAlive(t *testing.T, key []byte, to, id, gossipAddr string, meta []byte) {
	t.Helper()
	host, port, err := net.SplitHostPort(gossipAddr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	forgePacket(t, key, to, mlAliveMsg, mlAlive{Incarnation: math.MaxUint32, Node: id,
		Addr: net.ParseIP(host).To4(), Port: uint16(p), Meta: meta, Vsn: []uint8{1, 5, 2, 0, 0, 0}})
}

// realMeta returns the meta node n gossips now, changed by fn.
func realMeta(t *testing.T, n *Node, fn func(*memberMeta)) []byte {
	t.Helper()
	m := *n.mem.g.meta.Load()
	fn(&m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// holdsFor fails the test if bad reports a harm at any time within d
// (watching for a change over a fixed time: the attacks take effect within
// a reconcile, ~0.3 s here, when they work).
func holdsFor(t *testing.T, d time.Duration, bad func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if why := bad(); why != "" {
			t.Fatal(why)
		}
		time.Sleep(20 * time.Millisecond) // watching for a change over a fixed time
	}
}

// raftAddrs returns the leader's configuration as id → address and suffrage.
func raftServers(t *testing.T, n *Node) map[string]raft.Server {
	t.Helper()
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	out := map[string]raft.Server{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = s
	}
	return out
}

// deadRaftAddr is a loopback address nothing listens on.
func deadRaftAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestForgedRaftAddressDoesNotMoveAVoter: an alive forged with the gossip
// key alone (no node certificate), naming a healthy voter at its own
// gossip address with its meta but another Raft address, made the leader
// move the voter in the configuration ("a member at a new Raft address is
// updated in place"): the leader replicated to the forged address, which
// no node answers, and the voter was cut off. Forged at the highest
// incarnation the voter's refutation wraps to 0 and is ignored, so it
// stayed cut off; two such forgeries took a 3-node cluster below quorum.
// A new Raft address must now answer, over mutual TLS, as the node.
func TestForgedRaftAddressDoesNotMoveAVoter(t *testing.T) {
	g, key, leader, _ := tlsGossipThree(t)
	want := raftServers(t, leader)
	g.mu.Lock()
	nodes := make([]*Node, 0, len(g.nodes))
	for _, n := range g.nodes {
		nodes = append(nodes, n)
	}
	g.mu.Unlock()
	for _, victim := range nodes {
		if victim == leader {
			continue
		}
		forgeAlive(t, key, leader.GossipAddr(), victim.ID(), victim.GossipAddr(),
			realMeta(t, victim, func(m *memberMeta) { m.Raft = deadRaftAddr(t) }))
	}
	holdsFor(t, 3*time.Second, func() string {
		got := raftServers(t, leader)
		for id, s := range want {
			if got[id].Address != s.Address {
				return "the leader moved " + id + " to a forged Raft address: " + string(got[id].Address)
			}
		}
		return ""
	})
	g.stillCommits("after-forgery")
}

// stillCommits fails the test unless some leader commits a SetLimit of key
// within opWait. A leader may step down under load (a slow heartbeat
// round on a busy machine) and the next one commit instead; a forgery that
// really cut voters off leaves no quorum for any leader, and every try fails.
func (g *gossipCluster) stillCommits(key string) {
	g.t.Helper()
	deadline := time.Now().Add(opWait)
	var err error
	if !poll(opWait, func() bool {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		_, err = g.leader().SetLimit(ctx, &pb.SetLimitRequest{Key: key, Limit: hourly(1)})
		return err == nil
	}) {
		g.t.Fatalf("the cluster no longer commits after the forgery: %v", err)
	}
}

// TestForgedNewMemberIsNotAdded: an alive forged with the gossip key alone
// for an id no node holds, saying it started fresh and gossiping a healthy
// node's stats, made the leader add it to the Raft configuration as a
// non-voter, and autopilot then promoted it to a voter no one can answer
// for; a few of them outnumber the real voters and the cluster loses its
// quorum. A new member's Raft address must now answer as that node.
func TestForgedNewMemberIsNotAdded(t *testing.T) {
	_, key, leader, follower := tlsGossipThree(t)
	for i := range 3 {
		id := "ghost" + strconv.Itoa(i)
		forgeAlive(t, key, leader.GossipAddr(), id, "127.0.0.1:"+strconv.Itoa(1+i),
			realMeta(t, follower, func(m *memberMeta) { m.Raft, m.Fresh = deadRaftAddr(t), true }))
	}
	holdsFor(t, 3*time.Second, func() string {
		for id := range raftServers(t, leader) {
			if strings.HasPrefix(id, "ghost") {
				return "the leader added a forged member to the configuration: " + id
			}
		}
		return ""
	})
}

// TestForgedRemovedFlagDoesNotRemoveAVoter: an alive forged with the
// gossip key alone, giving a healthy voter a meta that says it was
// removed, made the leader report it to autopilot as left, and autopilot
// had it removed at once (a member that left is removed without waiting),
// then told it so: a healthy voter stopped for good. The leader now removes
// a member that gossip says left or died only if it no longer answers, at
// its Raft address, as itself.
func TestForgedRemovedFlagDoesNotRemoveAVoter(t *testing.T) {
	_, key, leader, victim := tlsGossipThree(t)
	forgeAlive(t, key, leader.GossipAddr(), victim.ID(), victim.GossipAddr(),
		realMeta(t, victim, func(m *memberMeta) { m.Removed = true }))
	holdsFor(t, 3*time.Second, func() string {
		if s, in := raftServers(t, leader)[victim.ID()]; !in || s.Suffrage != raft.Voter {
			return "the leader removed a healthy voter on a forged meta"
		}
		if victim.Removed() {
			return "the victim was told it was removed"
		}
		return ""
	})
}

// TestForgedLeaveAndDeathDoNotRemoveAVoter: the same with memberlist's
// own words: an alive forged with a meta saying the voter is leaving, then
// a dead message naming it as its own sender (memberlist's leave), both at
// the highest incarnation. Gossip then says the voter left, and autopilot
// removed it at once.
func TestForgedLeaveAndDeathDoNotRemoveAVoter(t *testing.T) {
	_, key, leader, victim := tlsGossipThree(t)
	forgeAlive(t, key, leader.GossipAddr(), victim.ID(), victim.GossipAddr(),
		realMeta(t, victim, func(m *memberMeta) { m.Leaving = true }))
	waitFor(t, opWait, "the leader to take the forged meta", func() bool {
		mb, ok := leader.mem.g.member(victim.ID())
		return ok && mb.meta.Leaving
	})
	forgePacket(t, key, leader.GossipAddr(), mlDeadMsg, mlDead{Incarnation: math.MaxUint32, Node: victim.ID(), From: victim.ID()})
	holdsFor(t, 3*time.Second, func() string {
		if s, in := raftServers(t, leader)[victim.ID()]; !in || s.Suffrage != raft.Voter {
			return "the leader removed a healthy voter that gossip was told had left"
		}
		return ""
	})
}

// TestForgedFreshFlagDoesNotDemoteAVoter: an alive forged with the gossip
// key alone, giving a healthy voter a meta that says it came back with no
// Raft state, made the leader remove it and add it back as a non-voter
// (the lost-state path), and with the forgery never refuted it was never
// promoted again: a healthy voter demoted for good; a second one left a
// 3-node cluster with a single voter. The leader now believes it only if
// the node, asked over Raft, refuses a vote as a fresh node's gate does.
func TestForgedFreshFlagDoesNotDemoteAVoter(t *testing.T) {
	_, key, leader, victim := tlsGossipThree(t)
	forgeAlive(t, key, leader.GossipAddr(), victim.ID(), victim.GossipAddr(),
		realMeta(t, victim, func(m *memberMeta) { m.Fresh = true }))
	holdsFor(t, 3*time.Second, func() string {
		if s, in := raftServers(t, leader)[victim.ID()]; !in || s.Suffrage != raft.Voter {
			return "the leader demoted a healthy voter on a forged meta"
		}
		return ""
	})
}

// TestOversizedGossipMetaIsRefused: memberlist bounds the meta a node
// sends (512 bytes), not the meta it receives: an alive forged with the
// gossip key carried 1 KiB of meta, decoded and kept for every such name.
// Admission now refuses a meta over memberlist's limit.
func TestOversizedGossipMetaIsRefused(t *testing.T) {
	_, key, leader, follower := tlsGossipThree(t)
	meta := realMeta(t, follower, func(m *memberMeta) { m.Version = strings.Repeat("x", 1024) })
	forgeAlive(t, key, leader.GossipAddr(), "big", "127.0.0.1:9", meta)
	// A small one sent after it: once the leader has it, the big one was
	// handled too (one sender, one socket, handled in order).
	forgeAlive(t, key, leader.GossipAddr(), "small", "127.0.0.1:10", realMeta(t, follower, func(m *memberMeta) {}))
	waitFor(t, opWait, "the leader to hear of the small forged member", func() bool {
		_, ok := leader.mem.g.member("small")
		return ok
	})
	if _, ok := leader.mem.g.member("big"); ok {
		t.Fatal("the leader kept a member whose meta is over memberlist's 512-byte limit")
	}
}

// TestForgedMembersDoNotJoinTheBootstrap: alive messages forged with the
// gossip key alone for two ids no node holds, each asking the same
// bootstrap of 3 as one real node, made that node bootstrap a cluster with
// them as voters: a first configuration whose quorum needs two members
// that do not exist. Each member of a bootstrap must now answer over Raft
// as itself.
func TestForgedMembersDoNotJoinTheBootstrap(t *testing.T) {
	g := newGossipCluster(t)
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	cfg, ln := g.config("n1", 3, withTLS(pkitest.New(t)), withGossipKey(key))
	cfg.Listener = ln
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	type opened struct {
		n   *Node
		err error
	}
	done := make(chan opened, 1)
	go func() {
		n, err := Open(ctx, cfg)
		done <- opened{n, err}
	}()
	// Forged again every 100 ms until Open ends: n1's gossip starts
	// within Open, and takes the first alive at the top incarnation.
	var metas [][]byte
	for range 2 {
		b, err := json.Marshal(memberMeta{Cluster: DefaultClusterName, Expect: 3, Raft: deadRaftAddr(t), LastContactMs: -1})
		if err != nil {
			t.Fatal(err)
		}
		metas = append(metas, b)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var o opened
	for wait := true; wait; {
		select {
		case o = <-done:
			wait = false
		case <-tick.C:
			for i, meta := range metas {
				forgeAlive(t, key, cfg.Gossip.BindAddr, "ghost"+strconv.Itoa(i), "127.0.0.1:"+strconv.Itoa(1+i), meta)
			}
		}
	}
	if o.err == nil {
		defer o.n.Close(context.Background())
		t.Fatalf("n1 bootstrapped a cluster with forged members: %v", raftServers(t, o.n))
	}
	t.Logf("Open ended without a bootstrap: %v", o.err)
}

// serveCert serves TLS handshakes with d's certificate for id on a
// loopback port until the test ends, and returns the address.
func serveCert(t *testing.T, d *pkitest.Dir, id string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", d.Source(pkitest.Node(id)).ServerConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// TestForgedClientAddrIsNotHandedOut: an alive forged with the gossip key
// alone, giving the leader a client API address where another node of the
// cluster serves (its certificate passes the SDK's and the CLI's check,
// which accepts any node's), made every follower's NotLeader, Status,
// Members and Member name that node as the leader's: the SDK went to it,
// was named the same address again, and never found the leader. Over TLS
// an address is now handed out unless a handshake there shows a
// certificate that does not name the member; one that does still is.
func TestForgedClientAddrIsNotHandedOut(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	d := pkitest.New(t)
	// Each node's client API address serves its certificate.
	withServedClientAddr := func(c *Config) { c.Gossip.ClientAddr = serveCert(t, d, c.ID) }
	g, nodes := bootstrapThree(t, withTLS(d), withGossipKey(key), withServedClientAddr)
	g.waitVoters(opWait, "n1", "n2", "n3")
	leader := g.leader()
	follower, other := followersOf(nodes, leader)
	hint := func() string {
		var nl *transport.NotLeaderError
		if err := follower.notLeader(); errors.As(err, &nl) && nl.LeaderID == leader.ID() {
			return nl.LeaderClientAddr
		}
		return "?"
	}
	forgeClient := func(addr string) {
		host, port, _ := net.SplitHostPort(leader.GossipAddr())
		p, _ := strconv.Atoi(port)
		forgePacket(t, key, follower.GossipAddr(), mlAliveMsg, mlAlive{Incarnation: math.MaxUint32, Node: leader.ID(),
			Addr: net.ParseIP(host).To4(), Port: uint16(p), Vsn: []uint8{1, 5, 2, 0, 0, 0},
			Meta: realMeta(t, leader, func(m *memberMeta) { m.Client = addr })})
	}

	// Where the leader's own certificate is served: handed out.
	good := g.cfgs[leader.ID()].Gossip.ClientAddr
	waitFor(t, opWait, "the follower to name the leader's address", func() bool { return hint() == good })
	// Its proof, a loopback handshake, ends within milliseconds.
	holdsFor(t, 500*time.Millisecond, func() string {
		if got := hint(); got != good {
			return "the follower stopped naming an address that serves the leader's certificate: " + got
		}
		return ""
	})

	// Where another node's is: not handed out once the handshake shows it.
	bad := serveCert(t, d, other.ID())
	forgeClient(bad)
	waitFor(t, opWait, "the follower to stop naming the forged address", func() bool { return hint() == "" })
	holdsFor(t, time.Second, func() string {
		if got := hint(); got == bad {
			return "the follower names the forged client address again"
		}
		if mi, _ := follower.Member(leader.ID()); mi.ClientAddr == bad {
			return "Member names the forged client address"
		}
		return ""
	})
}

// TestForgedExtremeStatsAreHarmless tries what is left to a holder of the
// gossip key: a healthy voter's stats forged to their extremes (last index
// and term at their maximum, a last contact that overflows a Duration in
// nanoseconds) and a version of control bytes. The leader must not panic,
// demote or remove the voter, and must keep committing and answering
// Members; autopilot may call the voter unhealthy (a misled health, the
// documented limit).
func TestForgedExtremeStatsAreHarmless(t *testing.T) {
	g, key, leader, victim := tlsGossipThree(t)
	forgeAlive(t, key, leader.GossipAddr(), victim.ID(), victim.GossipAddr(),
		realMeta(t, victim, func(m *memberMeta) {
			m.LastIndex, m.LastTerm, m.LastContactMs = math.MaxUint64, math.MaxUint64, math.MaxInt64
			m.Version = "\x00\x01\xff"
		}))
	waitFor(t, opWait, "the leader to take the forged stats", func() bool {
		mb, ok := leader.mem.g.member(victim.ID())
		return ok && mb.meta.LastIndex == math.MaxUint64
	})
	holdsFor(t, 2*time.Second, func() string {
		if s, in := raftServers(t, leader)[victim.ID()]; !in || s.Suffrage != raft.Voter {
			return "the leader demoted or removed a voter on forged stats"
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	l := g.leader()
	if _, err := l.Members(ctx, &pb.MembersRequest{}); err != nil {
		t.Fatalf("Members after forged stats: %v", err)
	}
	if _, err := l.SetLimit(ctx, &pb.SetLimitRequest{Key: "after-forgery", Limit: hourly(1)}); err != nil {
		t.Fatalf("the cluster no longer commits after forged stats: %v", err)
	}
}

// TestConcurrentMetaChangesAreNotLost: setMeta read the meta, changed it and
// stored it with nothing to keep another call out in between, so a change
// made meanwhile on another goroutine (a leave or a removal beside the
// membership loop's stats, a test's level) was stored over, undone, and
// never gossiped.
func TestConcurrentMetaChangesAreNotLost(t *testing.T) {
	g, err := startGossip(GossipConfig{BindAddr: "127.0.0.1:0"}.withDefaults(), "a",
		memberMeta{Cluster: DefaultClusterName, LastContactMs: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.shutdown() })
	inside, release := make(chan struct{}), make(chan struct{})
	stats, leaving := make(chan error, 1), make(chan error, 1)
	go func() {
		stats <- g.setMeta(func(m *memberMeta) { close(inside); <-release; m.LastIndex = 7 }, time.Second)
	}()
	<-inside
	go func() { leaving <- g.setMeta(func(m *memberMeta) { m.Leaving = true }, time.Second) }()
	// The second change waits for the first to be stored; on the old code it
	// was stored at once, and the first, stored after, undid it. (The wait
	// only gives the old code's call its time: either way the outcome below
	// must hold.)
	select {
	case err := <-leaving:
		leaving <- err
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	for _, done := range []chan error{stats, leaving} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if m := g.meta.Load(); m.LastIndex != 7 || !m.Leaving {
		t.Fatalf("meta after two concurrent changes: last index %d, leaving %v; want 7, true", m.LastIndex, m.Leaving)
	}
}
