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
	var mover, third *Node
	for _, n := range nodes {
		switch {
		case n == l:
		case mover == nil:
			mover = n
		default:
			third = n
		}
	}

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
		if !third.IsLeader() {
			return false
		}
		f := third.raft.GetConfiguration()
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
	t.Logf("%s leads with %s's new address %s (was %s) %v after it came back", third.ID(), back.ID(),
		back.RaftAddr(), oldRaft, time.Since(start).Round(time.Millisecond))
	if back.IsLeader() {
		t.Fatalf("the mover, with the shorter log, leads")
	}
}
