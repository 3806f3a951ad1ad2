package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/pki/pkitest"
)

// movedFollowerWait bounds the recovery TestMovedFollowerDoesNotBlockTheElection
// waits for: ~1-2 s on loopback (the third node hears the mover's alive
// message at its join, proves its new Raft address, and wins the next
// election), well under the 5-minute watchdog, so the old code fails here
// rather than in a goroutine dump.
const movedFollowerWait = opWait

// TestMovedFollowerDoesNotBlockTheElection: with the leader down and a
// follower that came back at a new Raft address before any leader updated
// its entry, the third node, whose log is longer than the mover's, is the
// only one that can win; it asked for the mover's vote at the old address
// from the configuration, which no one answers, and the mover could not win
// its vote (a shorter log), so no election ever succeeded until an operator
// wrote a peers.json (seen as a hung race run). Every node now dials a
// member at the Raft address it gossips once the member answered there as
// itself (routes.go): the third node reaches the mover, wins, and updates
// the mover's address as leader, with no operator.
func TestMovedFollowerDoesNotBlockTheElection(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"tls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []func(*Config)
			if tc.tls {
				key := make([]byte, 32)
				for i := range key {
					key[i] = byte(i + 7)
				}
				opts = append(opts, withTLS(pkitest.New(t)), withGossipKey(key))
			}
			testMovedFollowerDoesNotBlockTheElection(t, opts...)
		})
	}
}

func testMovedFollowerDoesNotBlockTheElection(t *testing.T, opts ...func(*Config)) {
	g, nodes := bootstrapThree(t, opts...)
	g.waitVoters(opWait, "n1", "n2", "n3")
	g.waitHealthy()
	l := g.leader()
	mover, third := followersOf(nodes, l)

	// The mover stops; the leader commits an entry with the third node
	// alone, so the mover's log is the shorter; then the leader stops.
	g.mu.Lock()
	cfg := g.cfgs[mover.ID()]
	g.mu.Unlock()
	oldRaft, moverLast := mover.RaftAddr(), mover.raft.LastIndex()
	closeNode(g, mover)
	if err := l.raft.Barrier(opWait).Error(); err != nil {
		t.Fatalf("commit an entry without the mover: %v", err)
	}
	if last := third.raft.LastIndex(); last <= moverLast {
		t.Fatalf("the third node's log (last index %d) is not longer than the mover's (%d)", last, moverLast)
	}
	closeNode(g, l)

	// The mover comes back at a new Raft address. No operator acts.
	back := reopenMoved(t, g, cfg, oldRaft)
	start := time.Now()
	waitFor(t, movedFollowerWait, "the third node to lead with the mover's new address in its configuration", func() bool {
		s, ok := serverIn(third, back.ID())
		return third.IsLeader() && ok && string(s.Address) == back.RaftAddr() && s.Suffrage == raft.Voter
	})
	t.Logf("%s leads with %s's new address %s (was %s) %v after it came back", third.ID(), back.ID(),
		back.RaftAddr(), oldRaft, time.Since(start).Round(time.Millisecond))
	if back.IsLeader() {
		t.Fatalf("the mover, with the shorter log, leads")
	}
}

// TestForgedRaftAddressIsNotDialed: every node now dials a member at the
// Raft address gossip says it moved to, so a holder of the gossip key
// (no node certificate) who could point member X at another node would
// send X's votes and entries there: to a member with a valid certificate
// for another id, to the leader, or to an address no one answers (cutting
// X off). A route needs X to answer there as itself: forged alive messages
// for a follower, at its own gossip address (memberlist's state) and at
// another (a conflict, as a moved node's), naming the other follower's,
// the leader's and a dead Raft address, give no node a route, and the
// cluster keeps committing. Without TLS the answer's header names the
// node that answered; over TLS its certificate must name X.
func TestForgedRaftAddressIsNotDialed(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"tls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			key := make([]byte, 32)
			for i := range key {
				key[i] = byte(i + 3)
			}
			opts := []func(*Config){withGossipKey(key)}
			if tc.tls {
				opts = append(opts, withTLS(pkitest.New(t)))
			}
			g, nodes := bootstrapThree(t, opts...)
			g.waitVoters(opWait, "n1", "n2", "n3")
			g.waitHealthy()
			l := g.leader()
			victim, other := followersOf(nodes, l)
			elsewhere := deadRaftAddr(t) // a gossip address of no node: a conflict
			for _, to := range nodes {
				for _, raftAddr := range []string{other.RaftAddr(), l.RaftAddr(), deadRaftAddr(t)} {
					meta := realMeta(t, victim, func(m *memberMeta) { m.Raft = raftAddr })
					forgeAlive(t, key, to.GossipAddr(), victim.ID(), elsewhere, meta)
					forgeAlive(t, key, to.GossipAddr(), victim.ID(), victim.GossipAddr(), meta)
				}
			}
			holdsFor(t, 3*time.Second, func() string {
				for _, n := range nodes {
					if a, ok := n.routes.get(raft.ServerID(victim.ID())); ok {
						return n.ID() + " dials " + victim.ID() + " at a forged Raft address " + string(a)
					}
				}
				return ""
			})
			g.stillCommits("after-forgery")
		})
	}
}
