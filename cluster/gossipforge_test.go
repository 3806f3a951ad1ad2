package cluster

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/pki/pkitest"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// withGossipKey gives every node's gossip the keyring key.
func withGossipKey(key []byte) func(*Config) {
	return func(c *Config) { c.Gossip.Keys = [][]byte{key} }
}

// forgeGossip sends msg to node to as an outsider that holds the gossip key
// but no node certificate: a memberlist of its own, which joins no one.
func forgeGossip(t *testing.T, key []byte, to *Node, msg gossipMsg) {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name, mc.BindAddr, mc.BindPort, mc.LogOutput = "forger", "127.0.0.1", 0, io.Discard
	kr, err := memberlist.NewKeyring([][]byte{key}, key)
	if err != nil {
		t.Fatal(err)
	}
	mc.Keyring, mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = kr, true, true
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	host, port, err := net.SplitHostPort(to.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	body, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ml.SendReliable(&memberlist.Node{Name: to.ID(), Addr: net.ParseIP(host), Port: uint16(p)},
		append([]byte{msg.kind}, body...)); err != nil {
		t.Fatal(err)
	}
}

// tlsGossipThree starts three nodes over TLS with an encrypted gossip (and
// opts) and returns them with the gossip key, the leader and a follower.
func tlsGossipThree(t *testing.T, opts ...func(*Config)) (g *gossipCluster, key []byte, leader, follower *Node) {
	key = make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	g, _, leader, follower = healthyThree(t, append([]func(*Config){withTLS(pkitest.New(t)), withGossipKey(key)}, opts...)...)
	return g, key, leader, follower
}

// TestForgedRemovalNoticeIsIgnored: one removal notice forged by a holder
// of the gossip key (no node certificate), claiming to come from the leader
// with a term and index above everyone's, stopped a healthy voter for good
// (it shut Raft down and marked its data directory removed); two of them
// took a 3-node cluster below quorum. A notice must be signed by the node
// it claims to come from. The leader's own notice still works: a voter
// removed while it was down learns it when it comes back.
func TestForgedRemovalNoticeIsIgnored(t *testing.T) {
	g, key, leader, victim := tlsGossipThree(t)
	forgeGossip(t, key, victim, gossipMsg{kind: msgRemoved, ID: victim.ID(), From: leader.ID(),
		Term: 1 << 40, Index: 1 << 40})
	// The notice is handled within milliseconds when it is believed (it
	// was, on real processes); watch for that over a fixed time.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if victim.Removed() {
			t.Fatalf("%s believed a forged removal notice and stopped taking part", victim.ID())
		}
		time.Sleep(20 * time.Millisecond) // watching for a change over a fixed time
	}
	if s, in := suffrages(t, leader)[victim.ID()]; !in || s != raft.Voter {
		t.Fatalf("%s in the leader's configuration %v, as %v; want a voter", victim.ID(), in, s)
	}

	// The real thing: removed while down, it hears the leader's signed
	// notice when it comes back.
	cfg := g.cfgs[victim.ID()]
	victim.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, victim.ID())
	g.mu.Unlock()
	// Whichever node leads by then (a loaded machine may elect again with
	// one of three down).
	waitFor(t, opWait, "the victim removed by the leader", func() bool {
		l := g.leader()
		if _, in := suffrages(t, l)[victim.ID()]; !in {
			return true
		}
		_, err := l.RemoveMember(context.Background(), &pb.RemoveMemberRequest{Id: victim.ID()})
		return err == nil
	})
	cfg.Listener, cfg.RaftAddr = nil, victim.RaftAddr()
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, opWait, "the removed node to believe the leader's signed notice", back.Removed)
}

// TestForgedLeaveIsIgnored: one leave forged by a holder of the gossip key,
// naming a healthy voter, made the leader remove that voter (which was
// then told it was removed, and stopped for good). A leave must be signed
// by the node that leaves. A node's own leave still works.
func TestForgedLeaveIsIgnored(t *testing.T) {
	_, key, leader, victim := tlsGossipThree(t)
	forgeGossip(t, key, leader, gossipMsg{kind: msgLeave, ID: victim.ID(), From: victim.ID()})
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if s, in := suffrages(t, leader)[victim.ID()]; !in || s != raft.Voter {
			t.Fatalf("the leader acted on a forged leave: %s in the configuration %v, as %v", victim.ID(), in, s)
		}
		time.Sleep(20 * time.Millisecond) // watching for a change over a fixed time
	}

	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if err := victim.Leave(ctx); err != nil {
		t.Fatalf("a signed leave: %v", err)
	}
	if _, in := suffrages(t, leader)[victim.ID()]; in {
		t.Fatalf("%s left but is still in the configuration", victim.ID())
	}
}

// TestReplayedLeaveAfterRejoinIsIgnored: a holder of the gossip key who
// recorded a node's signed leave could replay it after the node had left
// and joined again under the same id (its certificate names the id), and
// the leader removed it again: the signature was the node's, and nothing
// said which life of the node it was from. A leave now names the
// configuration index its sender knew, and the leader refuses one older
// than its own. The leader's removal notice of the node's earlier life,
// replayed to it, is ignored too.
func TestReplayedLeaveAfterRejoinIsIgnored(t *testing.T) {
	var (
		mu   sync.Mutex
		sent []gossipMsg
	)
	record := func(c *Config) {
		gc := *c.Gossip
		gc.onSend = func(_ string, msg gossipMsg) {
			mu.Lock()
			sent = append(sent, msg)
			mu.Unlock()
		}
		c.Gossip = &gc
	}
	recorded := func(kind byte, id string) (gossipMsg, bool) {
		mu.Lock()
		defer mu.Unlock()
		for i := len(sent) - 1; i >= 0; i-- {
			if sent[i].kind == kind && sent[i].ID == id {
				return sent[i], true
			}
		}
		return gossipMsg{}, false
	}
	g, key, _, victim := tlsGossipThree(t, record)

	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	if err := victim.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	leave, ok := recorded(msgLeave, victim.ID())
	if !ok {
		t.Fatal("no leave recorded")
	}
	notice, haveNotice := recorded(msgRemoved, victim.ID())

	// The node joins again under its id, with an empty data directory.
	cfg := g.cfgs[victim.ID()]
	victim.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, victim.ID())
	g.mu.Unlock()
	if err := os.RemoveAll(cfg.Dir); err != nil {
		t.Fatal(err)
	}
	cfg.Listener, cfg.RaftAddr = nil, victim.RaftAddr()
	gc := *cfg.Gossip
	gc.BootstrapExpect = 0
	cfg.Gossip = &gc
	back, err := g.open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.waitVoters(2*opWait, "n1", "n2", "n3")

	forgeGossip(t, key, g.leader(), leave)
	if haveNotice {
		forgeGossip(t, key, back, notice)
	}
	// A replayed leave was acted on within milliseconds; watch for that
	// over a fixed time.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if s, in := suffrages(t, g.leader())[back.ID()]; !in || s != raft.Voter {
			t.Fatalf("a replayed leave of %s's earlier life removed it: in the configuration %v, as %v", back.ID(), in, s)
		}
		if back.Removed() {
			t.Fatalf("%s believed a replayed removal notice of its earlier life", back.ID())
		}
		time.Sleep(20 * time.Millisecond) // watching for a change over a fixed time
	}

	// Its leave in this life still works.
	ctx2, cancel2 := context.WithTimeout(context.Background(), opWait)
	defer cancel2()
	if err := back.Leave(ctx2); err != nil {
		t.Fatalf("a leave in the node's new life: %v", err)
	}
}

// TestMovedMemberIsUpdatedInPlace: a voter that comes back on the same data
// at new Raft and gossip addresses is the same member: the leader updates
// its address in the configuration, and it is a healthy voter again, with
// no remove and add. (The issue asked for it; nothing tested it. It takes
// ~26 s on loopback, 2026-12-06: memberlist takes the id's new gossip
// address only once the old one is declared dead, and until then the
// leader dials the old Raft address.)
func TestMovedMemberIsUpdatedInPlace(t *testing.T) {
	g, _, _, mover := healthyThree(t)
	back, _ := moveNode(t, g, mover)
	start := time.Now()
	// The claim is that it happens, not how fast: memberlist's suspicion
	// and reclaim timers make it ~26 s, so the deadline is three opWaits.
	waitFor(t, 3*opWait, "the leader's configuration to name the new address", func() bool {
		f := g.leader().raft.GetConfiguration()
		if f.Error() != nil {
			return false
		}
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == back.ID() {
				return string(s.Address) == back.RaftAddr() && s.Suffrage == raft.Voter
			}
		}
		return false
	})
	t.Logf("the leader updated %s's address %v after it came back", back.ID(), time.Since(start).Round(time.Millisecond))
	g.waitVoters(opWait, "n1", "n2", "n3")
	g.waitHealthy()
}

// TestMovedLeaderUpdatesItsOwnAddress: a voter that comes back at a new
// Raft address and wins an election before any leader has updated its
// entry must update the entry itself. Reconcile skipped the leader, so the
// entry kept the old address, where no node could reach it once it lost
// leadership (TestMovedMemberIsUpdatedInPlace timed out so when the moved
// node, hearing no heartbeat at its new address, called an election and
// won it). Here one follower is down for good, the other stops while the
// leader appends an entry it cannot commit, and the leader moves: the
// follower comes back at its own address with the shorter log, so only
// the moved node can win (it reaches the follower there), and only it can
// update its entry. (With logs of equal length the follower may win
// instead, since every node dials a member at the address it proved over
// gossip and Raft, routes.go; then it updates the entry as any move.)
func TestMovedLeaderUpdatesItsOwnAddress(t *testing.T) {
	g, nodes := bootstrapThree(t)
	g.waitVoters(opWait, "n1", "n2", "n3")
	g.waitHealthy()
	l := g.leader()
	var followers []*Node
	for _, n := range nodes {
		if n != l {
			followers = append(followers, n)
		}
	}
	closeNode(g, followers[0])
	f := followers[1]
	g.mu.Lock()
	fcfg := g.cfgs[f.ID()]
	g.mu.Unlock()
	faddr, flast := f.RaftAddr(), f.raft.LastIndex()
	closeNode(g, f)
	l.raft.Barrier(0) // appended, never committed: no one else is up
	waitFor(t, opWait, "the leader to append an entry the follower lacks", func() bool {
		return l.raft.LastIndex() > flast
	})
	back, oldRaft := moveNode(t, g, l)
	ln, err := net.Listen("tcp", faddr)
	if err != nil {
		t.Fatalf("listen again at the follower's address: %v", err)
	}
	if _, err := g.open(fcfg, ln); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	waitFor(t, 3*opWait, "the moved node to lead with its new address in the configuration", func() bool {
		s, ok := serverIn(back, back.ID())
		return back.IsLeader() && ok && string(s.Address) == back.RaftAddr()
	})
	t.Logf("%s leads again and named its new address (was %s) %v after it came back", back.ID(), oldRaft,
		time.Since(start).Round(time.Millisecond))
}

// closeNode closes n and forgets it in g.
func closeNode(g *gossipCluster, n *Node) {
	n.close(context.Background(), false)
	g.mu.Lock()
	delete(g.nodes, n.ID())
	g.mu.Unlock()
}

// moveNode closes n and opens it again on the same data at new Raft and
// gossip addresses. It returns the node back and the Raft address it left.
func moveNode(t *testing.T, g *gossipCluster, n *Node) (back *Node, oldRaft string) {
	t.Helper()
	cfg := g.cfgs[n.ID()]
	oldRaft = n.RaftAddr()
	closeNode(g, n)
	return reopenMoved(t, g, cfg, oldRaft), oldRaft
}

// reopenMoved opens a closed node, cfg, again on its data at new Raft and
// gossip addresses; oldRaft is the Raft address it had.
func reopenMoved(t *testing.T, g *gossipCluster, cfg Config, oldRaft string) *Node {
	t.Helper()
	moved, ln := g.config("spare", 0) // new ports; its seeds list every gossip address so far
	cfg.Gossip.BindAddr, cfg.Gossip.Join = moved.Gossip.BindAddr, moved.Gossip.Join
	back, err := g.open(cfg, ln)
	if err != nil {
		t.Fatal(err)
	}
	if back.RaftAddr() == oldRaft {
		t.Fatalf("the node came back at its old Raft address %s", oldRaft)
	}
	return back
}
