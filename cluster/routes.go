package cluster

import (
	"errors"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// A member that moves (the same id, a new Raft address) is reached at its
// configured address until a leader updates the configuration. With no
// leader that can deadlock: the leader down, a moved follower, and a third
// node whose log is longer than the mover's, so only the third node can win;
// it asks for the mover's vote at the old address, which no one answers, and
// the mover cannot win the third node's vote. So every node's transport
// dials a member at the Raft address it gossips once the member has
// answered there as itself (routeMembers), and at its configured address
// otherwise (DESIGN.md, "Membership": "Where a member is dialed").

// peerRoutes are the Raft addresses this node dials members at in place of
// the configured ones: each a member's gossiped address at which the member
// answered over Raft, as itself, before it was put here. Written by the
// membership loop, read on every outbound RPC by raft's goroutines: the
// map is replaced whole, never changed in place. It is safe for concurrent
// use; the zero value routes nothing.
type peerRoutes struct {
	m atomic.Pointer[map[raft.ServerID]raft.ServerAddress]

	// fenced counts the fences up, so that an RPC takes no lock when
	// there are none (almost always).
	fenced atomic.Int32
	mu     struct {
		sync.Mutex
		fences map[raft.ServerID]*moveFence
	}
}

// moveFence holds back the leader's replication to a member whose entry it
// is about to move in place (fenceMove).
type moveFence struct {
	old     raft.ServerAddress // the configured address being replaced
	crossed chan struct{}      // closed by the first replication RPC refused
	once    sync.Once
}

// errMoving is what an RPC held back by a moveFence fails with.
var errMoving = errors.New("raft: the member's address is being updated in the configuration; retrying at the new one")

// fenceMove holds back, until release, the RPCs of raft's replication to
// member id (AppendEntries other than heartbeats, InstallSnapshot) sent to
// its configured address old: each fails with errMoving, and one that was
// under way fails when it returns. crossed is closed at the first one
// refused.
//
// Why: hashicorp/raft v1.7.3 updates a member's address in place by
// writing its replication's peer under a lock that the replication
// goroutine does not take when, after an AppendEntries returns success, it
// reads the peer's id again (updateLastAppended; also handleStaleTerm). A
// route made that read concurrent with the write for the first time (an
// AppendEntries to the old address now succeeds), and the race detector
// caught it. The leader fences the member, waits until crossed (the
// replication goroutine called again, so its last read is done, or a call
// under way was refused), changes the configuration, and releases: after
// the write raft reads the new address under the lock and dials it, which
// the fence lets through.
func (r *peerRoutes) fenceMove(id raft.ServerID, old raft.ServerAddress) (crossed <-chan struct{}, release func()) {
	f := &moveFence{old: old, crossed: make(chan struct{})}
	r.mu.Lock()
	if r.mu.fences == nil {
		r.mu.fences = map[raft.ServerID]*moveFence{}
	}
	r.mu.fences[id] = f
	r.fenced.Add(1)
	r.mu.Unlock()
	var once sync.Once
	return f.crossed, func() {
		once.Do(func() {
			r.mu.Lock()
			if r.mu.fences[id] == f {
				delete(r.mu.fences, id)
			}
			r.fenced.Add(-1)
			r.mu.Unlock()
		})
	}
}

// held reports whether a replication RPC to id at target is held back by a
// fence, and marks the fence crossed if so.
func (r *peerRoutes) held(id raft.ServerID, target raft.ServerAddress) bool {
	if r == nil || r.fenced.Load() == 0 {
		return false
	}
	r.mu.Lock()
	f := r.mu.fences[id]
	r.mu.Unlock()
	if f == nil || f.old != target {
		return false
	}
	f.once.Do(func() { close(f.crossed) })
	return true
}

// send makes an RPC to member id, whose configured address is target,
// through rpc at its route (resolve). replicate marks raft's replication
// RPCs, which a moveFence holds back before and after the call.
func (r *peerRoutes) send(id raft.ServerID, target raft.ServerAddress, replicate bool, rpc func(raft.ServerAddress) error) error {
	if replicate && r.held(id, target) {
		return errMoving
	}
	err := rpc(r.resolve(id, target))
	if err == nil && replicate && r.held(id, target) {
		return errMoving
	}
	return err
}

// isHeartbeat reports whether req is one of raft's heartbeats, which
// carry nothing but the term and the leader (raft's heartbeat loop reads
// nothing of the peer after one returns).
func isHeartbeat(req *raft.AppendEntriesRequest) bool {
	return len(req.Entries) == 0 && req.PrevLogEntry == 0 && req.PrevLogTerm == 0 && req.LeaderCommitIndex == 0
}

// resolve returns where to dial member id, whose configured address is
// addr: its route if it has one, else addr.
func (r *peerRoutes) resolve(id raft.ServerID, addr raft.ServerAddress) raft.ServerAddress {
	if r == nil {
		return addr
	}
	if m := r.m.Load(); m != nil {
		if a, ok := (*m)[id]; ok {
			return a
		}
	}
	return addr
}

// get returns member id's route, if it has one.
func (r *peerRoutes) get(id raft.ServerID) (raft.ServerAddress, bool) {
	if m := r.m.Load(); m != nil {
		a, ok := (*m)[id]
		return a, ok
	}
	return "", false
}

// update applies fn to a copy of the routes and stores the copy. Only the
// membership loop writes, so no two updates race.
func (r *peerRoutes) update(fn func(map[raft.ServerID]raft.ServerAddress)) {
	next := map[raft.ServerID]raft.ServerAddress{}
	if m := r.m.Load(); m != nil {
		next = maps.Clone(*m)
	}
	fn(next)
	r.m.Store(&next)
}

// routeMembers updates the routes from gossip and raft's latest
// configuration, on every node (a follower's votes and a candidate's
// requests need them most, while there is no leader): a member of the
// configuration gossiped at a Raft address other than its configured one
// (in memberlist's state of it, alive, or in a conflicting alive message
// within conflictMemory) gets a route there once it answers there as
// itself (prove; a claim that fails is asked again after proofRetry). If
// both prove, the one proven last wins. A route is
// dropped once the configuration names its address (a leader updated the
// entry) or the member leaves the configuration; a member gossiping its
// configured address again loses its route (it moved back). Members in
// DialAddrs are dialed there whatever gossip says, and get no route.
func (m *membership) routeMembers() {
	r := m.n.routes
	if r == nil || m.g == nil {
		return
	}
	cfg, _, err := m.configuration()
	if err != nil {
		return
	}
	inCfg := map[raft.ServerID]raft.ServerAddress{}
	for _, s := range cfg.Servers {
		inCfg[s.ID] = s.Address
	}
	var drop []raft.ServerID
	var claims []claim
	for _, mb := range m.g.members() {
		id := raft.ServerID(mb.id)
		conf, in := inCfg[id]
		if mb.id == m.n.cfg.ID || !in {
			continue
		}
		if _, fixed := m.n.cfg.DialAddrs[mb.id]; fixed {
			continue
		}
		// What gossip says of the member's Raft address: its state in
		// memberlist, and the address of a conflicting alive message
		// (the member moved, and memberlist has not given its name the
		// new gossip address yet), newest last.
		var said []raft.ServerAddress
		if mb.metaOK && mb.meta.Raft != "" && !mb.meta.Removed && mb.state == memberlist.StateAlive {
			said = append(said, raft.ServerAddress(mb.meta.Raft))
		}
		if a, ok := m.g.conflict(mb.id); ok {
			said = append(said, raft.ServerAddress(a))
		}
		route, routed := r.get(id)
		switch {
		case len(said) == 0:
			// Nothing said: keep the route the member last proved.
		case routed && !slices.Contains(said, route) && slices.Contains(said, conf):
			drop = append(drop, id) // it moved back
		}
		for _, a := range said {
			c := claim{kind: claimRoute, id: mb.id, addr: string(a)}
			if a != conf && (!routed || a != route) && !slices.Contains(claims, c) {
				claims = append(claims, c)
			}
		}
	}
	// Routes of members no longer in the configuration, or whose entry now
	// names the routed address.
	if cur := r.m.Load(); cur != nil {
		for id, a := range *cur {
			if conf, in := inCfg[id]; !in || conf == a {
				drop = append(drop, id)
			}
		}
	}
	proven := m.prove(claims)
	if len(drop) == 0 && len(proven) == 0 {
		return
	}
	r.update(func(routes map[raft.ServerID]raft.ServerAddress) {
		for _, id := range drop {
			delete(routes, id)
		}
		for _, c := range proven {
			m.log.Info("member answers at a new Raft address: dialing it there until the configuration names it",
				"member", c.id, "raft", c.addr, "configured", inCfg[raft.ServerID(c.id)])
			routes[raft.ServerID(c.id)] = raft.ServerAddress(c.addr)
		}
	})
}

// routedTransport is the plain-TCP Raft transport with routes: each RPC
// dials the member's route, if it has one, in place of the address raft
// names (DialAddrs, raft's ServerAddressProvider, still wins). The pool of
// connections is keyed by the address dialed, so a connection to a
// member's old address is never used for its new one. Over TLS
// secureTransport does the same.
type routedTransport struct {
	*raft.NetworkTransport
	routes *peerRoutes
}

// AppendEntriesPipeline implements raft.Transport.
func (t *routedTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	return t.NetworkTransport.AppendEntriesPipeline(id, t.routes.resolve(id, target))
}

// AppendEntries implements raft.Transport.
func (t *routedTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.routes.send(id, target, !isHeartbeat(args), func(addr raft.ServerAddress) error {
		return t.NetworkTransport.AppendEntries(id, addr, args, resp)
	})
}

// RequestVote implements raft.Transport.
func (t *routedTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.NetworkTransport.RequestVote(id, t.routes.resolve(id, target), args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *routedTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.NetworkTransport.RequestPreVote(id, t.routes.resolve(id, target), args, resp)
}

// InstallSnapshot implements raft.Transport.
func (t *routedTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.routes.send(id, target, true, func(addr raft.ServerAddress) error {
		return t.NetworkTransport.InstallSnapshot(id, addr, args, resp, data)
	})
}

// TimeoutNow implements raft.Transport.
func (t *routedTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.NetworkTransport.TimeoutNow(id, t.routes.resolve(id, target), args, resp)
}
