package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/ratelog"
	"github.com/leasehold/leasehold/transport"
)

// removedFile marks a data directory whose node learned it was removed
// from its cluster; Open refuses it (ErrRemoved).
const removedFile = "raft.removed"

// membership is a node's part in membership: its gossip, and, while it
// leads, autopilot and the reconcile loop. It is safe for concurrent use.
type membership struct {
	n     *Node
	cfg   GossipConfig // with defaults
	log   *slog.Logger
	g     *gossip
	pilot *autopilot.Autopilot

	life     string // this run's Life (memberMeta), random
	removed  atomic.Bool
	wasVoter atomic.Bool   // this node has seen itself in a configuration
	gate     *voteGate     // a fresh node's vote gate; nil otherwise
	removeMu sync.Mutex    // serializes a removal's quorum check and change
	kick     chan struct{} // wakes the loop for a reconcile (capacity 1)
	newTerm  chan struct{} // wakes the loop to gossip stats: a new term's entry was written (capacity 1)
	stop     chan struct{}
	wg       sync.WaitGroup
	// refuseLog rate-limits the log of messages refused by verify: a
	// holder of the gossip key can send any number of them.
	refuseLog *ratelog.Limiter
	// claimLog rate-limits the log of gossip claims their members did
	// not prove over Raft (prove.go): as many as forged alive messages.
	claimLog *ratelog.Limiter

	mu struct {
		sync.Mutex
		// indexes are this node's last log index, sampled every
		// UpdateInterval over the last minute: what a member's gossiped
		// index is compared with, at the time it was received.
		indexes   []indexSample
		downSince map[string]time.Time // voters not alive, since when (leader)
		removing  map[string]bool      // removals in flight (leader)
		pulling   bool                 // a pull of stale members' gossip in flight (leader; pullStale)
		// healthySince is, for each member autopilot found healthy at every
		// round since, the first of those rounds, earlier by the time
		// carried over from the previous leader (leader; NotifyState).
		healthySince map[string]time.Time
		notified     map[string]time.Time     // removed notices sent (leader)
		state        *autopilot.State         // autopilot's last state (leader; verdictLocked)
		stateTerm    uint64                   // the term state was computed in
		leader       transport.NotLeaderError // the last leader known, for a removed node
		unproven     map[claim]time.Time      // claims that failed their proof, when (leader)
		// dropped are the members this node removed as leader, by id,
		// with the Life each gossiped then: one still gossiping fresh
		// with that Life is not added again (reconcile). Forgotten once
		// the id gossips another Life or leaves gossip.
		dropped map[string]string
		// addrProofs are the proofs of members' client and HTTP addresses
		// (servedAddr).
		addrProofs map[addrKey]addrProof

		// heard is the last report of its non-voters' stability that this
		// node read in its leader's gossip while following it: what it
		// carries over should it lead next (predecessorCredit).
		heard stableReport
		// Of the leadership NotifyState last saw (leader): its term, the
		// newest term before it in the log (0: unknown), and its first
		// round; the time each non-voter carries over from the previous
		// leader, until its first healthy round or a round unhealthy for
		// more than the term lag (termLagOnlyLocked); what was carried
		// over; and the non-voters whose wait was logged (logWait).
		leaderTerm, prevTerm uint64
		leaderSince          time.Time
		credit, carried      map[string]time.Duration
		waitLogged           map[string]bool
	}
}

func newMembership(n *Node) *membership {
	m := &membership{n: n, cfg: *n.cfg.Gossip, log: n.log, kick: make(chan struct{}, 1), newTerm: make(chan struct{}, 1),
		stop: make(chan struct{}), refuseLog: ratelog.New(time.Second, 5), claimLog: ratelog.New(time.Second, 5)}
	m.mu.downSince = map[string]time.Time{}
	m.mu.removing = map[string]bool{}
	m.mu.healthySince = map[string]time.Time{}
	m.mu.carried = map[string]time.Duration{}
	m.mu.waitLogged = map[string]bool{}
	m.mu.notified = map[string]time.Time{}
	m.mu.unproven = map[claim]time.Time{}
	m.mu.addrProofs = map[addrKey]addrProof{}
	m.mu.dropped = map[string]string{}
	var life [8]byte
	_, _ = rand.Read(life[:]) // crypto/rand.Read never fails (Go 1.24+)
	m.life = hex.EncodeToString(life[:])
	return m
}

// initialMeta is this node's meta before its first stats update.
func (m *membership) initialMeta(fresh bool) memberMeta {
	return memberMeta{Cluster: m.cfg.ClusterName, Expect: m.cfg.BootstrapExpect, Raft: m.n.advertise,
		Client: m.cfg.ClientAddr, HTTP: m.cfg.HTTPAddr, NonVoter: m.cfg.NonVoter, Version: m.cfg.Version,
		Level: commandLevel, Fresh: fresh, Life: m.life, LastContactMs: -1}
}

// startGossip starts gossip, if not started yet, and joins the seeds,
// waiting for one to answer unless background is set.
func (m *membership) startGossip(ctx context.Context, fresh, background bool) error {
	if m.g != nil {
		return nil
	}
	g, err := startGossip(m.cfg, m.n.cfg.ID, m.initialMeta(fresh), m.n.log)
	if err != nil {
		return err
	}
	m.g = g
	if background {
		m.wg.Add(1)
		go m.joinInBackground()
		return nil
	}
	if err := g.join(ctx); err != nil {
		g.shutdown()
		m.g = nil
		return err
	}
	return nil
}

// prepareEmpty decides how a node with an empty data directory and no
// static Peers starts: it starts gossip and joins the seeds; without
// BootstrapExpect it is a fresh node that waits for the leader to add it;
// with it, it waits until exactly BootstrapExpect fresh nodes expecting the
// same have met and none has Raft state, and bootstraps them, or it finds a
// member with state (a cluster exists) and joins as a fresh node instead.
func (m *membership) prepareEmpty(ctx context.Context, rc *raft.Config, snaps raft.SnapshotStore, trans raft.Transport) error {
	expect := m.cfg.BootstrapExpect
	if err := m.startGossip(ctx, expect == 0, false); err != nil {
		return err
	}
	if expect == 0 {
		m.log.Info("empty data directory: joining as a fresh node; the leader will add it as a non-voter")
		return writeMarker(m.n.cfg.Dir, m.n.cfg.ID)
	}
	stop := answerAsEmpty(trans)
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last []string
	var since time.Time
	for {
		// Candidates are the nodes that expect the same bootstrap and were
		// not started to join: empty ones, and any that bootstrapped from
		// the same set a moment before this one did and has not gone past
		// the bootstrap entry yet.
		// Fresh nodes (started to join) wait for a leader and count for
		// nothing.
		var ready []raft.Server
		var ids []string
		exists := ""
		for _, mb := range m.g.members() {
			if mb.state != memberlist.StateAlive || !mb.metaOK || mb.meta.Cluster != m.cfg.ClusterName {
				continue
			}
			// Index 1 is the bootstrap's configuration: a member past it has
			// elected a leader since, so a cluster exists (this node may be
			// one of it that lost its state: it must not bootstrap again).
			if mb.meta.Expect == expect && !mb.meta.Fresh && mb.meta.LastIndex <= 1 {
				ready = append(ready, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(mb.id), Address: raft.ServerAddress(mb.meta.Raft)})
				ids = append(ids, mb.id)
			} else if mb.meta.LastIndex > 0 {
				exists = mb.id // a member with state not among them: a cluster exists
			}
		}
		stateful := 0
		for _, mb := range m.g.members() {
			if mb.metaOK && mb.meta.LastIndex > 0 {
				stateful++
			}
		}
		if exists == "" && len(ready) > expect && stateful > 0 {
			exists = "one of " + strings.Join(ids, ",")
		}
		if exists != "" {
			m.log.Info("a cluster already exists: not bootstrapping; joining as a fresh node", "member", exists)
			if err := m.g.setMeta(func(mm *memberMeta) { mm.Fresh = true }, time.Second); err != nil {
				m.log.Warn("gossip the fresh flag", "err", err)
			}
			return writeMarker(m.n.cfg.Dir, m.n.cfg.ID)
		}
		switch {
		case len(ready) != expect:
			since = time.Time{}
			if len(ready) > expect {
				m.log.Warn("more nodes than BootstrapExpect are waiting to bootstrap: not bootstrapping", "expect", expect, "nodes", ids)
			}
		case !slices.Equal(ids, last) || since.IsZero():
			since = time.Now()
		case time.Since(since) >= time.Second:
			// The same expect nodes for a second: every one of them sees
			// them too, and bootstraps the same configuration, once each
			// answers over Raft as itself, with no cluster formed: gossip
			// alone would let a holder of its key put members no node
			// holds in the first configuration (TestForgedMembersDoNotJoinTheBootstrap).
			if bad := m.unprovenVoters(ready); bad != "" {
				m.claimLog.Log(m.log, slog.LevelWarn, "gossip: not bootstrapping: members that do not answer over Raft, or are past the bootstrap entry",
					"members", bad)
				since = time.Time{}
				break
			}
			stop()
			stop = nil
			if err := raft.BootstrapCluster(rc, m.n.logs, m.n.store, snaps, trans, raft.Configuration{Servers: ready}); err != nil {
				return fmt.Errorf("bootstrap cluster: %w", err)
			}
			m.log.Info("bootstrapped a new cluster from gossip", "voters", ids)
			return writeMarker(m.n.cfg.Dir, m.n.cfg.ID)
		}
		last = ids
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d nodes to bootstrap (have %v): %w", expect, ids, ctx.Err())
		case <-tick.C:
		}
	}
}

// unprovenVoters asks every server of a bootstrap configuration but this
// node, over Raft as this node's Raft dials it (over TLS, only the node
// holding the id's certificate answers), for its last log index, and
// describes those that do not answer or are past the bootstrap entry; ""
// if none.
func (m *membership) unprovenVoters(servers []raft.Server) string {
	peers := make([]Peer, 0, len(servers))
	for _, s := range servers {
		peers = append(peers, Peer{ID: string(s.ID), RaftAddr: string(s.Address)})
	}
	dial, provider, target := m.n.raftDialer()
	states := probePeers(Peer{ID: m.n.cfg.ID, RaftAddr: m.n.advertise}, peers, provider, target, dial,
		m.n.cfg.ProbeTimeout, newHCLog(m.log, "probe"))
	// Past the bootstrap entry (index 1) a leader was elected: gossip's own
	// rule above. Not the term: one that bootstrapped a moment before this
	// node campaigns, and raises it, until the others bootstrap too.
	states = slices.DeleteFunc(states, func(st peerState) bool { return st.err == nil && st.lastLog <= 1 })
	return describePeers(states)
}

// start starts gossip if prepareEmpty did not, and the membership loop.
// Raft is running. An empty fresh node waits for a seed to answer (it can
// do nothing without the cluster, so an error ends Open); a node with Raft
// state joins in the background, retrying until one answers: it takes
// part through Raft meanwhile, so seeds that are down (a survivor after an
// outage, nodes restarted one by one) do not stop it; background says so.
// A node with state can be fresh too: one that stopped before its vote
// gate opened (gateFile).
func (m *membership) start(ctx context.Context, fresh, background bool) error {
	if err := m.startGossip(ctx, fresh, background); err != nil {
		return err
	}
	m.pilot = autopilot.New(m.n.raft, m,
		autopilot.WithLogger(newHCLog(m.n.log, "autopilot")),
		autopilot.WithUpdateInterval(m.cfg.UpdateInterval/pilotRoundsPerUpdate),
		autopilot.WithReconcileInterval(m.cfg.ReconcileInterval),
		autopilot.WithPromoter(&promoter{m: m}))
	newTerm := func() {
		select {
		case m.newTerm <- struct{}{}:
		default:
		}
	}
	m.n.logs.newTerm.Store(&newTerm)
	m.wg.Add(1)
	go m.run()
	m.log.Info("membership on", "gossip", m.g.addr(), "cluster", m.cfg.ClusterName)
	return nil
}

// joinInBackground joins the seeds of a node with Raft state, retrying
// every JoinTimeout until one answers or the node closes.
func (m *membership) joinInBackground() {
	defer m.wg.Done()
	ctx, cancel := m.untilClose(context.Background())
	defer cancel()
	for {
		err := m.g.join(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		m.log.Warn("gossip: no seed answered; the node works through Raft meanwhile and keeps trying", "err", err)
	}
}

// close stops the loop and autopilot and gossip (without leaving: the
// others see the node fail, as after a crash, and keep its place).
func (m *membership) close() {
	// m.stop is closed under m.mu, where RemoveFailedServer (called on
	// autopilot's goroutine, which stops only below) checks it before its
	// wg.Add: no goroutine is added once Wait may have begun.
	m.mu.Lock()
	select {
	case <-m.stop:
		m.mu.Unlock()
		return
	default:
	}
	close(m.stop)
	m.mu.Unlock()
	m.wg.Wait()
	if m.pilot != nil {
		<-m.pilot.Stop()
	}
	if m.g != nil {
		_ = m.g.shutdown()
	}
}

// leadership starts autopilot when the node gains leadership and stops it
// when it loses it.
func (m *membership) leadership(leader bool) {
	if m.pilot == nil || m.removed.Load() {
		return
	}
	if leader {
		m.mu.Lock()
		clear(m.mu.downSince)
		clear(m.mu.healthySince)
		m.mu.Unlock()
		m.pilot.Start(context.Background())
		m.trigger()
		return
	}
	m.pilot.Stop()
	// Not kept while following: the new-term hook gossips the stats (and,
	// as leader, this count) on the loop, possibly before leadership(true)
	// clears it, and a count from an earlier leadership, grown by the time
	// since, was gossiped as the new leader's (a review found the race).
	m.mu.Lock()
	clear(m.mu.healthySince)
	m.mu.Unlock()
}

// untilClose returns a copy of ctx that is also canceled when close
// begins. Call cancel when done with it: it ends the goroutine that
// watches for close.
func (m *membership) untilClose(ctx context.Context) (_ context.Context, cancel context.CancelFunc) {
	ctx, cancel = context.WithCancel(ctx)
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// closing reports whether close has begun.
func (m *membership) closing() bool {
	select {
	case <-m.stop:
		return true
	default:
		return false
	}
}

func (m *membership) trigger() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// pilotRoundsPerUpdate is how many times autopilot recomputes health per
// UpdateInterval: stats gossiped at once on a new term (run) count within a
// quarter of the interval, not at the next whole one, so that a new
// leader finds its followers healthy within a fraction of a second
// (DESIGN.md, "Membership"). A round reads local state only.
const pilotRoundsPerUpdate = 4

// run gossips this node's stats (every UpdateInterval, and at once when a
// new leader's first entry is written here, so that the leader hears its
// term within a gossip round), handles messages, and reconciles while the
// node leads, until close.
func (m *membership) run() {
	defer m.wg.Done()
	stats := time.NewTicker(m.cfg.UpdateInterval)
	defer stats.Stop()
	recon := time.NewTicker(m.cfg.ReconcileInterval)
	defer recon.Stop()
	m.updateStats()
	for {
		select {
		case <-m.stop:
			return
		case <-stats.C:
			m.updateStats()
			m.checkSelfRemoved()
			m.updateLevel()
			if m.n.IsLeader() {
				m.pullStale()
			}
		case <-m.newTerm:
			m.updateStats()
		case msg := <-m.g.msgs:
			m.handle(msg)
		case <-m.g.changed:
			m.trigger()
		case <-recon.C:
			m.trigger()
		case <-m.kick:
			if m.removed.Load() {
				continue
			}
			m.updateLevel()
			m.routeMembers()
			if m.n.IsLeader() {
				m.reconcile()
			} else {
				m.hearLeader()
			}
		}
	}
}

// indexSample is this node's last log index at a time.
type indexSample struct {
	at  time.Time
	idx uint64
}

// sampleIndex records this node's last log index now, keeping a minute.
func (m *membership) sampleIndex(idx uint64) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.indexes = append(m.mu.indexes, indexSample{now, idx})
	i := 0
	for i < len(m.mu.indexes)-1 && now.Sub(m.mu.indexes[i].at) > time.Minute {
		i++
	}
	m.mu.indexes = m.mu.indexes[i:]
}

// indexAt returns this node's last log index at time t: the last sample
// taken at or before t (the oldest if none was).
func (m *membership) indexAt(t time.Time) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var idx uint64
	for i, s := range m.mu.indexes {
		if i > 0 && s.at.After(t) {
			break
		}
		idx = s.idx
	}
	return idx
}

// lastLogTerm reads raft's last log term from its stats.
func (m *membership) lastLogTerm() uint64 {
	t, _ := strconv.ParseUint(m.n.raft.Stats()["last_log_term"], 10, 64)
	return t
}

// updateStats gossips this node's log index and term and last contact.
func (m *membership) updateStats() {
	if m.removed.Load() {
		return
	}
	r := m.n.raft
	lc := int64(-1)
	switch {
	case r.State() == raft.Leader:
		lc = 0
	case !r.LastContact().IsZero():
		lc = time.Since(r.LastContact()).Milliseconds()
	}
	// Raft records its last log only once the write returns, and the
	// write of a new term's first entry wakes this: the store's term may
	// be the newer.
	idx, term := r.LastIndex(), max(m.lastLogTerm(), m.n.logs.term.Load())
	m.sampleIndex(idx)
	if id, addr := m.n.Leader(); id != "" {
		leader := transport.NotLeaderError{LeaderID: id, LeaderRaftAddr: addr, LeaderClientAddr: m.clientAddr(id)}
		m.mu.Lock()
		m.mu.leader = leader
		m.mu.Unlock()
	}
	var stable map[string]int64
	if r.State() == raft.Leader {
		stable = m.pendingStability()
	} else {
		m.hearLeader()
	}
	err := m.g.setMeta(func(mm *memberMeta) {
		// Contact is rounded to 100ms so that a quiet cluster does not
		// gossip a new meta every second for nothing.
		mm.LastIndex, mm.LastTerm, mm.LastContactMs = idx, term, lc/100*100
		mm.Stable = stable
		fitStable(mm)
	}, time.Second)
	if err != nil {
		m.log.Debug("gossip stats", "err", err)
	}
}

// pullStale runs a push-pull (gossip.pull) with one member autopilot last
// found unhealthy (this term) whose gossip is alive and has not changed for
// an UpdateInterval, picked at random among them, on a goroutine of its own
// unless one is running. One a round: a member that went down a moment ago
// is still alive in gossip, and its dial can take memberlist's TCPTimeout
// (10 s on a LAN), which close waits for. A meta
// update is a broadcast its node sends to RetransmitMult*ceil(log10(N+1))
// members only (2 of 4 peers in five nodes on loopback), each passing it on
// to as many, once, and nothing sends it again while it is unchanged: one
// that missed the leader reached it at memberlist's next push-pull, 15-30 s
// later, and the leader judged the member by its earlier stats meanwhile
// (five nodes just bootstrapped: one on the first term for 13-20 s, 1 start
// in 17 under -race; TestMissedStatsUpdateIsPulled). A member that lags or
// lost its leader gossips new stats every UpdateInterval, and a fresh one is
// unhealthy by its own word: neither needs pulling.
func (m *membership) pullStale() {
	m.mu.Lock()
	st := m.verdictLocked()
	m.mu.Unlock()
	if st == nil {
		return
	}
	var addrs []string
	for id, srv := range st.Servers {
		if srv.Health.Healthy || string(id) == m.n.cfg.ID {
			continue
		}
		mb, ok := m.g.member(string(id))
		if ok && mb.metaOK && !mb.meta.Fresh && mb.state == memberlist.StateAlive && time.Since(mb.updated) >= m.cfg.UpdateInterval {
			addrs = append(addrs, mb.addr)
			break // the map's order is random
		}
	}
	if len(addrs) == 0 {
		return
	}
	m.mu.Lock()
	if m.mu.pulling || m.closing() {
		m.mu.Unlock()
		return
	}
	m.mu.pulling = true
	m.wg.Add(1) // under m.mu: close has not begun its Wait (see close)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		if err := m.g.pull(addrs); err != nil {
			m.log.Debug("pull the gossip of members found unhealthy", "err", err)
		}
		m.mu.Lock()
		m.mu.pulling = false
		m.mu.Unlock()
	}()
}

// stableReport is a leader's gossiped stability of its non-voters
// (memberMeta.Stable) and its term (its last log term then).
type stableReport struct {
	term   uint64
	stable map[string]int64
	at     time.Time // when the leader's meta carrying it arrived
}

// hearLeader keeps what this node's leader last gossiped of its
// non-voters' stability, for this node to carry over should it lead next.
func (m *membership) hearLeader() {
	id, _ := m.n.Leader()
	if id == "" || id == m.n.cfg.ID {
		return
	}
	mb, ok := m.g.member(id)
	// Not from a member gossip no longer finds alive: the event that
	// said so is not news of its report, and would date it now.
	if !ok || !mb.metaOK || mb.state != memberlist.StateAlive {
		return
	}
	m.mu.Lock()
	m.mu.heard = stableReport{term: mb.meta.LastTerm, stable: mb.meta.Stable, at: mb.updated}
	m.mu.Unlock()
}

// pendingStability returns, for each non-voter of the configuration that
// may be promoted and that this leader has found healthy at every round
// since, for how long (carried-over time included), in milliseconds
// rounded down to 100; nil if none.
func (m *membership) pendingStability() map[string]int64 {
	cfg, _, err := m.configuration()
	if err != nil {
		return nil
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out map[string]int64
	for _, s := range cfg.Servers {
		since, ok := m.mu.healthySince[string(s.ID)]
		if s.Suffrage != raft.Nonvoter || !ok || m.staysNonVoter(s.ID) {
			continue
		}
		if out == nil {
			out = map[string]int64{}
		}
		out[string(s.ID)] = now.Sub(since).Milliseconds() / 100 * 100
	}
	return out
}

// fitStable drops the shortest of mm.Stable's entries until mm's JSON fits
// in memberlist's meta limit: memberlist gossips no meta at all over it.
// mm.Stable must be the caller's own map.
func fitStable(mm *memberMeta) {
	for len(mm.Stable) > 0 {
		if b, err := json.Marshal(mm); err == nil && len(b) <= memberlist.MetaMaxSize {
			return
		}
		shortest := ""
		for id, ms := range mm.Stable {
			if shortest == "" || ms < mm.Stable[shortest] || (ms == mm.Stable[shortest] && id > shortest) {
				shortest = id
			}
		}
		delete(mm.Stable, shortest)
	}
}

// clientAddr returns member id's client API address from gossip, "" if
// unknown or, over TLS, disproven (servedAddr).
func (m *membership) clientAddr(id string) string {
	if m == nil || m.g == nil || id == "" {
		return ""
	}
	if mb, ok := m.g.member(id); ok && mb.metaOK {
		return m.servedAddr(id, mb.meta.Client)
	}
	return ""
}

// checkSelfRemoved decides from the latest committed configuration this
// node has applied (the FSM adapter's), never from raft's latest one,
// which may hold a change the next leader rolls back: a fresh node's vote
// gate opens once a committed configuration names it a non-voter, and a
// node that has been in a committed configuration learns it was removed
// once one does not name it (a node catching up replays older
// configurations without itself first). A removed node may never apply
// the configuration that removes it (its leader stops replicating to it
// before it learns of the commit): the leader's removal notice covers that
// (handle). DESIGN.md, "Membership".
func (m *membership) checkSelfRemoved() {
	cfg, index := m.n.fsm.configuration()
	if index == 0 || len(cfg.Servers) == 0 {
		return
	}
	i := slices.IndexFunc(cfg.Servers, func(s raft.Server) bool { return s.ID == raft.ServerID(m.n.cfg.ID) })
	if m.gate != nil && !m.gate.open.Load() {
		if h := m.cfg.holdGate; h != nil && h.Load() {
			return
		}
		// A fresh node: it votes, and counts as a member, once the
		// leader has added it as a non-voter (it may replay older
		// configurations naming its old self first).
		if i >= 0 && cfg.Servers[i].Suffrage == raft.Nonvoter {
			m.n.openGate(m.gate)
			m.log.Info("added by the leader as a non-voter: it answers vote requests from now on, and votes once promoted to voter", "index", index)
			if err := m.g.setMeta(func(mm *memberMeta) { mm.Fresh = false }, time.Second); err != nil {
				m.log.Debug("gossip the fresh flag", "err", err)
			}
		}
		return
	}
	if i >= 0 {
		m.wasVoter.Store(true)
		return
	}
	if m.wasVoter.Load() {
		m.becomeRemoved(fmt.Sprintf("the committed configuration at index %d does not name it", index))
	}
}

// sign signs msg with this node's certificate, when Raft runs over TLS.
func (m *membership) sign(msg gossipMsg) (gossipMsg, error) {
	if m.n.cfg.TLS == nil {
		return msg, nil
	}
	b, err := msg.signedBytes()
	if err != nil {
		return msg, err
	}
	msg.Chain, msg.Sig, err = m.n.cfg.TLS.Sign(b)
	return msg, err
}

// verify checks, when Raft runs over TLS, that msg was signed by the node
// it says it is from (a node certificate of the cluster's CA naming
// msg.From), and that a leave speaks for its sender alone. Gossip's key
// authenticates no one: every node holds it, and memberlist does not say
// which member sent a message; without this, one forged message with the
// key stopped a healthy voter for good (TestForgedRemovalNoticeIsIgnored,
// TestForgedLeaveIsIgnored). Without TLS anyone may say anything, as on
// every other port.
func (m *membership) verify(msg gossipMsg) error {
	if m.n.cfg.TLS == nil {
		return nil
	}
	if msg.kind == msgLeave && msg.ID != msg.From {
		return fmt.Errorf("%s asks to remove %s; a member may ask only for itself", msg.From, msg.ID)
	}
	b, err := msg.signedBytes()
	if err != nil {
		return err
	}
	id, err := m.n.cfg.TLS.VerifySigned(msg.Chain, b, msg.Sig)
	if err != nil {
		return err
	}
	if want := (pki.Identity{Role: pki.RoleNode, Name: msg.From}); id != want {
		return fmt.Errorf("signed by %s, not by %s", id, want)
	}
	return nil
}

// handle acts on a message from another member.
func (m *membership) handle(msg gossipMsg) {
	if err := m.verify(msg); err != nil {
		m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: refused a message whose sender is not proven", "kind", string(msg.kind),
			"id", msg.ID, "from", msg.From, "err", err)
		return
	}
	switch msg.kind {
	case msgLeave:
		if !m.n.IsLeader() {
			return
		}
		// A leave names the latest configuration its sender knew. One
		// older than the leader's was sent before the last change (the
		// sender resends with its new one): above all, before the node
		// was removed and added again, when a holder of the gossip key
		// who recorded it could remove the node again
		// (TestReplayedLeaveAfterRejoinIsIgnored). Index 0: a node of an
		// older release, which names none.
		if _, index := m.n.fsm.configuration(); msg.Index < index {
			m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: refused a leave older than the configuration "+
				"(a replay, or a node of an older release: remove it with leasehold remove)",
				"member", msg.ID, "index", msg.Index, "ours", index)
			return
		}
		// In the background: the removal's check asks the voters over
		// Raft, up to ProbeTimeout (quorumLeft), and the loop gossips
		// stats and reconciles meanwhile. A leave resent while it runs
		// is dropped.
		id := msg.ID
		m.removeInBackground(id, func() {
			m.log.Info("member asks to leave", "member", id)
			ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ApplyTimeout)
			defer cancel()
			if _, err := m.remove(ctx, id, false); err != nil {
				m.log.Warn("remove a leaving member", "member", id, "err", err)
			}
		})
	case msgRemoved:
		if msg.ID != m.n.cfg.ID || m.removed.Load() {
			return
		}
		if msg.Life != "" && msg.Life == m.life {
			// A notice for this run of the node alone: the leader names
			// the Life the node gossiped when it removed it, which no
			// earlier run had, so no notice of an earlier life can pass
			// for it. It counts even before a fresh node's vote gate
			// opens: an operator may remove a fresh node in the moment
			// between its addition and the gate's opening
			// (TestOperatorRemovalOfAFreshNodeSticks). Still no older
			// than the configuration this node applied: a notice that
			// arrives after a leader that did not hear of the removal
			// added this run again is stale.
			if _, index := m.n.fsm.configuration(); msg.Index < index {
				m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: ignored a removal notice older than this node's configuration",
					"from", msg.From, "index", msg.Index, "ours", index)
				return
			}
			m.removedBy(msg)
			return
		}
		if m.n.raft.LastIndex() == 0 {
			return // no state yet: nothing to be removed from (a fresh node)
		}
		if m.gate != nil && !m.gate.open.Load() {
			// A fresh node not yet added in this life: nothing to be
			// removed from. While it catches up it replays the
			// configurations of an earlier life of its id, and a notice
			// of that life's removal, replayed by a holder of the gossip
			// key, would pass the index check below. The leader tells
			// only members that are not fresh.
			m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: ignored a removal notice before this fresh node was added",
				"from", msg.From, "index", msg.Index)
			return
		}
		// A leader's word: believe a removal no older than this node's
		// latest committed configuration and term. A notice of an earlier
		// life of this id, replayed by a holder of the gossip key, is
		// older than the configuration that added it again
		// (TestReplayedLeaveAfterRejoinIsIgnored).
		if _, index := m.n.fsm.configuration(); msg.Index < index {
			m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: ignored a removal notice older than this node's configuration",
				"from", msg.From, "index", msg.Index, "ours", index)
			return
		}
		if msg.Term < m.n.raft.CurrentTerm() {
			m.refuseLog.Log(m.log, slog.LevelWarn, "gossip: ignored a removal notice from an older term",
				"from", msg.From, "term", msg.Term)
			return
		}
		m.removedBy(msg)
	}
}

// removedBy acts on a removal notice handle believed: it keeps the sender
// as the last leader known, for NotLeader answers, and stops taking part.
func (m *membership) removedBy(msg gossipMsg) {
	m.mu.Lock()
	m.mu.leader = transport.NotLeaderError{LeaderID: msg.From, LeaderClientAddr: msg.Leader}
	m.mu.Unlock()
	m.becomeRemoved(fmt.Sprintf("leader %s removed it from the configuration (index %d, term %d)", msg.From, msg.Index, msg.Term))
}

// becomeRemoved makes this node stop taking part: it marks the data
// directory (Open refuses it from then on), leaves gossip, and shuts Raft
// down so it neither campaigns nor votes (hashicorp/raft#524). The process
// keeps running: Status says removed, writes get NotLeader naming the last
// leader known.
func (m *membership) becomeRemoved(reason string) {
	if !m.removed.CompareAndSwap(false, true) {
		return
	}
	m.log.Warn("this node was removed from the cluster; it takes no part any more. "+
		"Stop it; to bring it back, remove its data directory and start it again as a new node", "reason", reason)
	if err := os.WriteFile(filepath.Join(m.n.cfg.Dir, removedFile), []byte(reason+"\n"), 0o640); err != nil {
		m.log.Error("write the removed marker", "err", err)
	}
	if err := m.g.setMeta(func(mm *memberMeta) { mm.Removed = true }, time.Second); err != nil {
		m.log.Debug("gossip the removed flag", "err", err)
	}
	if m.pilot != nil {
		m.pilot.Stop()
	}
	if err := m.g.leave(2 * time.Second); err != nil {
		m.log.Debug("leave gossip", "err", err)
	}
	if err := m.n.raft.Shutdown().Error(); err != nil {
		m.log.Warn("shut raft down", "err", err)
	}
	m.n.stream.closeConns()
}

// lastLeader is the NotLeader a removed node answers.
func (m *membership) lastLeader() *transport.NotLeaderError {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.mu.leader
	return &e
}

// configuration returns raft's latest configuration, committed or not,
// and the index of the latest committed one this node has applied (0 if
// none yet): raft's own ConfigurationFuture.Index is always 0 in v1.7.3,
// so the index comes from the FSM adapter.
func (m *membership) configuration() (raft.Configuration, uint64, error) {
	f := m.n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, 0, fmt.Errorf("read raft configuration: %w", err)
	}
	_, index := m.n.fsm.configuration()
	return f.Configuration(), index, nil
}

// reconcile turns gossip into Raft changes, on the leader, beside
// autopilot (which promotes and removes dead voters): an alive fresh
// member not in the configuration is added as a non-voter; a member at a
// new Raft address is updated in place; a voter that comes back fresh
// under its old id (it lost its state) is removed and added again as a
// non-voter (its vote gate opens only then, and it is promoted once caught
// up); a member with Raft state that is not in the configuration (removed,
// yet running) is told so, and stops. The first three are claims anyone
// with the gossip key can make for any id: each is acted on only once the
// member proves it over Raft (prove).
func (m *membership) reconcile() {
	cfg, index, err := m.configuration()
	if err != nil {
		return
	}
	inCfg := map[string]raft.Server{}
	for _, s := range cfg.Servers {
		inCfg[string(s.ID)] = s
	}
	// This leader moved: it came back at a new Raft address and won an
	// election before any leader updated its entry (it hears no heartbeat
	// at the new address, so it calls one). No other node updates a
	// leader's entry, and once it lost leadership no one could reach it.
	// Its own address needs no proof (TestMovedMemberIsUpdatedInPlace,
	// TestMovedLeaderUpdatesItsOwnAddress).
	if s, ok := inCfg[m.n.cfg.ID]; ok && m.n.advertise != "" && string(s.Address) != m.n.advertise {
		m.log.Info("this leader moved: updating its own Raft address in place", "from", s.Address, "to", m.n.advertise)
		if err := m.pilot.AddServer(&autopilot.Server{ID: s.ID, Name: m.n.cfg.ID,
			Address: raft.ServerAddress(m.n.advertise), NodeStatus: autopilot.NodeAlive}); err != nil {
			m.log.Warn("update this leader's own address", "err", err)
		}
	}
	// A member is told it was removed only when the committed
	// configuration does not name it either: a removal this leader has
	// appended may not commit, and the next leader may roll it back
	// (TestRolledBackRemovalDoesNotStopTheNode). remove tells the member
	// once its removal commits.
	committed, _ := m.n.fsm.configuration()
	inCommitted := map[string]bool{}
	for _, s := range committed.Servers {
		inCommitted[string(s.ID)] = true
	}
	members := m.g.members()
	m.mu.Lock()
	dropped := maps.Clone(m.mu.dropped)
	m.forgetDroppedLocked(members)
	m.mu.Unlock()
	var claims []claim
	for _, mb := range members {
		if mb.id == m.n.cfg.ID || !mb.metaOK || mb.meta.Removed || mb.state != memberlist.StateAlive {
			continue
		}
		s, in := inCfg[mb.id]
		switch {
		case !in && mb.meta.Life != "" && dropped[mb.id] == mb.meta.Life:
			// Removed by this leader in this run of the member: not added
			// again, however fresh it says it is, not even while the
			// removal is appended and not yet committed; told again once
			// it has committed.
			if !inCommitted[mb.id] {
				m.notifyRemoved(mb.id, index, mb.meta.Life)
			}
		case !in && mb.meta.Fresh && mb.meta.Raft != "":
			claims = append(claims, claim{kind: claimAdd, id: mb.id, addr: mb.meta.Raft})
		case !in && mb.meta.LastIndex > 0:
			if !inCommitted[mb.id] {
				m.notifyRemoved(mb.id, index, "")
			}
		case in && routed(m.n.routes, s):
			// A route this node proved: the member answered there as itself
			// (routeMembers), maybe before memberlist took its new gossip
			// address. Proven again before the change, like any claim.
			route, _ := m.n.routes.get(s.ID)
			claims = append(claims, claim{kind: claimMove, id: mb.id, addr: string(route)})
		case in && string(s.Address) != mb.meta.Raft && mb.meta.Raft != "":
			claims = append(claims, claim{kind: claimMove, id: mb.id, addr: mb.meta.Raft})
		case in && s.Suffrage == raft.Voter && mb.meta.Fresh:
			claims = append(claims, claim{kind: claimFresh, id: mb.id, addr: string(s.Address)})
		}
	}
	for _, c := range m.prove(claims) {
		s := inCfg[c.id]
		switch c.kind {
		case claimAdd:
			m.log.Info("adding a new member as a non-voter", "member", c.id, "raft", c.addr)
			if err := m.pilot.AddServer(&autopilot.Server{ID: raft.ServerID(c.id), Name: c.id,
				Address: raft.ServerAddress(c.addr), NodeStatus: autopilot.NodeAlive}); err != nil {
				m.log.Warn("add member", "member", c.id, "err", err)
			}
		case claimMove:
			m.log.Info("member moved: updating its Raft address in place", "member", c.id, "from", s.Address, "to", c.addr)
			if err := m.moveInPlace(s, raft.ServerAddress(c.addr)); err != nil {
				m.log.Warn("update member address", "member", c.id, "err", err)
			}
		case claimFresh:
			m.log.Warn("a voter came back with no Raft state: removing it and adding it again as a non-voter",
				"member", c.id)
			ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ApplyTimeout)
			if _, err := m.removeAndTell(ctx, c.id, false, false); err != nil {
				m.log.Warn("remove the voter that lost its state", "member", c.id, "err", err)
			} else if err := m.n.await(ctx, m.n.raft.AddNonvoter(s.ID, s.Address, 0, m.n.cfg.ApplyTimeout)); err != nil {
				m.log.Warn("add it again as a non-voter", "member", c.id, "err", err)
			}
			cancel()
		}
	}
}

// routed reports whether member s has a route other than its configured
// address.
func routed(r *peerRoutes, s raft.Server) bool {
	if r == nil {
		return false
	}
	route, ok := r.get(s.ID)
	return ok && route != s.Address
}

// moveInPlace changes member s's address in the configuration to addr,
// keeping its suffrage, with the member's replication fenced (fenceMove:
// raft v1.7.3 races with itself otherwise, once a route makes the
// replication to the old address succeed). First a barrier, so that this
// leader's term has a committed entry and no configuration change is
// pending: raft takes a change only then, and while the fence holds the
// change back the replication it may need (two of three voters up, one of
// them the mover) would stall. Each wait is bounded by ProbeTimeout, the
// change's commit by ApplyTimeout.
func (m *membership) moveInPlace(s raft.Server, addr raft.ServerAddress) error {
	wait := m.n.cfg.ProbeTimeout
	if err := m.n.raft.Barrier(m.n.cfg.ApplyTimeout).Error(); err != nil {
		return fmt.Errorf("barrier before the change: %w", err)
	}
	crossed, release := m.n.routes.fenceMove(s.ID, s.Address)
	defer release()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-crossed:
	case <-t.C:
		// No replication RPC to the old address in that time: the member's
		// replication is backing off after failures, or in an RPC the fence
		// fails when it returns. Neither reads the peer after.
	case <-m.stop:
		return errClosed
	}
	var f raft.IndexFuture
	if s.Suffrage == raft.Nonvoter {
		f = m.n.raft.AddNonvoter(s.ID, addr, 0, wait)
	} else {
		f = m.n.raft.AddVoter(s.ID, addr, 0, wait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ApplyTimeout)
	defer cancel()
	return m.n.await(ctx, f)
}

// forgetDroppedLocked forgets the removed members that gossip another
// Life (started again, wiped, under the same id) or are no longer in
// members. m.mu is held.
func (m *membership) forgetDroppedLocked(members []memberInfo) {
	for id, life := range m.mu.dropped {
		i := slices.IndexFunc(members, func(mb memberInfo) bool { return mb.id == id })
		if i < 0 || (members[i].metaOK && members[i].meta.Life != life) {
			delete(m.mu.dropped, id)
		}
	}
}

// notifyRemoved tells member id, at most every 5s, that it is not in the
// configuration at index; life, if not "", names the run of the member
// that was removed (gossipMsg.Life).
func (m *membership) notifyRemoved(id string, index uint64, life string) {
	if mb, ok := m.g.member(id); !ok || mb.state != memberlist.StateAlive {
		// Not reachable now (removed while down): told once it is alive
		// again, by the next reconcile, not 5s after this attempt.
		return
	}
	m.mu.Lock()
	if t, ok := m.mu.notified[id]; ok && time.Since(t) < 5*time.Second {
		m.mu.Unlock()
		return
	}
	m.mu.notified[id] = time.Now()
	m.mu.Unlock()
	msg, err := m.sign(gossipMsg{kind: msgRemoved, ID: id, From: m.n.cfg.ID, Term: m.n.raft.CurrentTerm(), Index: index,
		Leader: m.cfg.ClientAddr, Life: life})
	if err != nil {
		m.log.Warn("sign a removal notice", "member", id, "err", err)
		return
	}
	if err := m.g.send(id, msg); err != nil {
		// Warn: a removed member alive in gossip that is never told keeps
		// campaigning (at most one line per member every 5s, the
		// notices' own pace).
		m.log.Warn("send a removal notice", "member", id, "err", err)
		return
	}
	m.log.Info("told a member that is not in the configuration that it was removed", "member", id)
}

// errQuorum is the reason a removal is refused without force.
var errQuorum = errors.New("would leave fewer healthy voters than a quorum")

// remove removes member id from the Raft configuration, on the leader,
// after checking (unless force) that the voters left include a quorum of
// healthy ones. Removals are serialized, each checked against the
// configuration the previous one left, and the change is made only to the
// configuration it was checked against: one that changed during the
// check (a promotion, an add) is checked again. The leader never removes
// itself here: it hands leadership over and answers NotLeader. Once the
// removal committed, the member is told, so a running one stops.
func (m *membership) remove(ctx context.Context, id string, force bool) (uint64, error) {
	return m.removeAndTell(ctx, id, force, true)
}

// removeAndTell is remove; tell says whether to tell the member (not when
// it is removed only to be added again).
func (m *membership) removeAndTell(ctx context.Context, id string, force, tell bool) (uint64, error) {
	m.removeMu.Lock()
	defer m.removeMu.Unlock()
	for checks := 1; ; checks++ {
		index, err := m.removeChecked(ctx, id, force, tell)
		if !errors.Is(err, errConfigChanged) {
			return index, err
		}
		if checks == removeChecks {
			return 0, fmt.Errorf("remove %s: the Raft configuration changed during each of %d checks; nothing was removed, try again",
				id, removeChecks)
		}
		m.log.Info("the configuration changed during a removal's check: checking again", "member", id)
	}
}

// removeChecks is how many times a removal is checked against a
// configuration that changed meanwhile before it gives up.
const removeChecks = 3

// errConfigChanged: the configuration changed between a removal's check
// and its change; nothing was removed.
var errConfigChanged = errors.New("configuration changed during the check")

// removeChecked is one attempt of removeAndTell, under removeMu. It
// checks the committed configuration once a barrier has applied every
// earlier entry (so no change is pending), and has raft make the change
// only to that configuration (RemoveServer's prevIndex): it answers
// errConfigChanged, having removed nothing, if another change came first.
func (m *membership) removeChecked(ctx context.Context, id string, force, tell bool) (uint64, error) {
	if !m.n.IsLeader() {
		return 0, m.n.notLeader()
	}
	if err := m.n.await(ctx, m.n.raft.Barrier(m.n.cfg.ApplyTimeout)); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, m.n.notLeader() // nothing of the removal was appended
		}
		return 0, fmt.Errorf("remove %s: apply the log's earlier entries first: %w", id, err)
	}
	cfg, index := m.n.fsm.configuration()
	var target *raft.Server
	var voters []raft.Server
	for i, s := range cfg.Servers {
		if s.ID == raft.ServerID(id) {
			target = &cfg.Servers[i]
		}
		if s.Suffrage == raft.Voter {
			voters = append(voters, s)
		}
	}
	if target == nil {
		return 0, &transport.InvalidError{Field: "id", Reason: fmt.Sprintf("%q is not in the Raft configuration (members: %s)",
			id, strings.Join(serverIDs(cfg), ", "))}
	}
	if id == m.n.cfg.ID {
		if len(voters) <= 1 {
			return 0, &transport.InvalidError{Field: "id", Reason: fmt.Sprintf("%q is the only voter; a cluster cannot remove its last voter", id)}
		}
		m.log.Info("asked to remove the leader itself: handing leadership over first")
		tctx, cancel := context.WithTimeout(ctx, m.n.cfg.ApplyTimeout)
		err := m.n.await(tctx, m.n.raft.LeadershipTransfer())
		cancel()
		if err != nil {
			return 0, fmt.Errorf("%w: hand leadership over before removing the leader: %w", transport.ErrUnknownOutcome, err)
		}
		return 0, m.n.notLeader()
	}
	if target.Suffrage == raft.Voter && !force {
		rest := slices.DeleteFunc(voters, func(v raft.Server) bool { return v.ID == target.ID })
		if err := m.quorumLeft(id, rest); err != nil {
			return 0, err
		}
		// The check takes up to seconds (it asks each voter).
		if _, now := m.n.fsm.configuration(); now != index {
			return 0, errConfigChanged
		}
	}
	life := ""
	if mb, ok := m.g.member(id); ok && mb.metaOK {
		life = mb.meta.Life
	}
	if tell && life != "" {
		// Before the change, so that no reconcile in between adds the
		// member again: a fresh one ignores a notice without its Life
		// until its vote gate opens, and still gossips fresh.
		m.mu.Lock()
		m.mu.dropped[id] = life
		m.mu.Unlock()
	}
	m.log.Info("removing a member", "member", id, "suffrage", target.Suffrage, "force", force)
	f := m.n.raft.RemoveServer(raft.ServerID(id), index, m.n.cfg.ApplyTimeout)
	if err := m.n.await(ctx, f); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return 0, m.n.notLeader()
		}
		// raft refuses a change whose prevIndex is not its latest
		// configuration's before it appends anything, with an error that
		// is no sentinel: its text is all there is. Any other error may
		// follow the append (raft writes the entry before it updates its
		// latest configuration), so its outcome is unknown.
		if f.Error() != nil && strings.Contains(f.Error().Error(), "configuration changed since") {
			return 0, errConfigChanged
		}
		return 0, fmt.Errorf("%w: remove %s: %w", transport.ErrUnknownOutcome, id, err)
	}
	m.mu.Lock()
	delete(m.mu.downSince, id)
	delete(m.mu.notified, id)
	m.mu.Unlock()
	if tell {
		m.notifyRemoved(id, f.Index(), life)
	}
	return f.Index(), nil
}

func serverIDs(cfg raft.Configuration) []string {
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, string(s.ID))
	}
	return out
}

// quorumLeft returns nil if a quorum of the voters rest (those left after
// removing id) is healthy for a removal, else the removal's refusal (or
// NotLeader if leadership moved meanwhile). The leader itself is; each
// other voter is asked at once, at the address the leader's Raft dials
// it at and all in parallel (askMember, each step at most ProbeTimeout),
// and is healthy if it answers on the current term, with a last log index
// within MaxTrailingLogs of the leader's and its vote gate open: it is
// reachable over Raft now, has followed this leader, and can vote. It
// does not show that the voter can store entries (a failed disk answers
// as well): DESIGN.md, "Removal by an operator".
//
// Not autopilot's verdict, which comes from what each member last gossiped
// and failed both ways (DESIGN.md, "Removal by an operator"): just after
// an election every follower still gossiped the old term and looked
// unhealthy, so removing the leader (which hands leadership over and is
// asked again of the new one) was refused (make chaos, seed 1, in CI); a
// voter stopped, paused, or cut off on Raft a moment ago still looked
// healthy for seconds (gossip's stats are not aged, and its failure
// detection takes seconds), and removing another voter then left a
// configuration with no quorum.
func (m *membership) quorumLeft(id string, rest []raft.Server) error {
	term, last := m.n.raft.CurrentTerm(), m.n.raft.LastIndex()
	ok := make([]bool, len(rest))
	var wg sync.WaitGroup
	for i, v := range rest {
		if string(v.ID) == m.n.cfg.ID {
			ok[i] = true
			continue
		}
		wg.Go(func() {
			addr := m.n.routes.resolve(v.ID, v.Address) // where Raft dials it
			ans, err := m.n.askMember(string(v.ID), string(addr), true, m.n.cfg.ProbeTimeout)
			ok[i] = err == nil && ans.term == term && ans.lastLog+m.cfg.MaxTrailingLogs >= last && !ans.gated
			if !ok[i] {
				m.log.Info("a voter left by a removal is not healthy", "removing", id, "voter", v.ID,
					"answer", describeAnswer(ans, err), "term", term, "last_index", last)
			}
		})
	}
	wg.Wait()
	// An election meanwhile: every voter answered another term. Say so,
	// as RemoveServer would, so that the caller asks the new leader.
	if !m.n.IsLeader() || m.n.raft.CurrentTerm() != term {
		return m.n.notLeader()
	}
	healthy := 0
	for _, o := range ok {
		if o {
			healthy++
		}
	}
	if quorum := len(rest)/2 + 1; healthy < quorum {
		return &transport.InvalidError{Field: "id", Reason: fmt.Sprintf(
			"removing %q %v: %d of the %d voters left are healthy, a quorum is %d; bring members back first, "+
				"or force it (leasehold remove --force)", id, errQuorum, healthy, len(rest), quorum)}
	}
	return nil
}

// healthy reports whether voter id counts as healthy for the failure
// tolerance Members and the gauges report: the leader itself; else
// autopilot's verdict, or, before autopilot has one, alive in gossip. A
// removal's check asks the voters instead (quorumLeft).
func (m *membership) healthy(id string) bool {
	if id == m.n.cfg.ID {
		return true
	}
	m.mu.Lock()
	st := m.verdictLocked()
	m.mu.Unlock()
	if st != nil {
		if s, ok := st.Servers[raft.ServerID(id)]; ok {
			return s.Health.Healthy
		}
	}
	mb, ok := m.g.member(id)
	return ok && mb.state == memberlist.StateAlive
}

// verdictLocked returns autopilot's last state if it was computed in the
// current term, else nil: a node elected again kept its earlier
// leadership's verdict until its first round of this one, and Members and
// the failure tolerance reported members from it (a voter stopped then
// and back since, unhealthy). Called with m.mu held.
func (m *membership) verdictLocked() *autopilot.State {
	if m.mu.state == nil || m.mu.stateTerm != m.n.raft.CurrentTerm() {
		return nil
	}
	return m.mu.state
}

// leave asks the leader to remove this node (handing leadership over
// first if it leads), waits until it learns it was removed or ctx ends,
// then leaves gossip. The last voter cannot leave.
func (m *membership) leave(ctx context.Context) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for !m.removed.Load() {
		cfg, index, err := m.configuration()
		if err == nil {
			voters := 0
			for _, s := range cfg.Servers {
				if s.Suffrage == raft.Voter {
					voters++
				}
			}
			if voters <= 1 {
				return errors.New("leave: this node is the cluster's only voter; nothing to leave")
			}
		}
		switch leader, _ := m.n.Leader(); {
		case m.n.IsLeader():
			m.log.Info("leaving: handing leadership over first")
			tctx, cancel := context.WithTimeout(ctx, m.n.cfg.ApplyTimeout)
			if err := m.n.await(tctx, m.n.raft.LeadershipTransfer()); err != nil {
				m.log.Warn("leave: leadership transfer", "err", err)
			}
			cancel()
		case leader != "":
			// Index binds the leave to this life of the node: the leader
			// refuses one older than its configuration, so a leave
			// recorded before the node was removed and added again does
			// not remove it again (handle). A new configuration not yet
			// seen here is resent with the next tick.
			msg, err := m.sign(gossipMsg{kind: msgLeave, ID: m.n.cfg.ID, From: m.n.cfg.ID, Index: index})
			if err == nil {
				err = m.g.send(leader, msg)
			}
			if err != nil {
				m.log.Debug("leave: ask the leader", "leader", leader, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			_ = m.g.leave(time.Second)
			return fmt.Errorf("leave: the leader did not remove this node: %w", ctx.Err())
		case msg := <-m.g.msgs:
			m.handle(msg)
		case <-tick.C:
		}
	}
	return nil
}

// autopilot.ApplicationIntegration, on the leader.

// AutopilotConfig returns autopilot's rules from GossipConfig.
func (m *membership) AutopilotConfig() *autopilot.Config {
	return &autopilot.Config{
		CleanupDeadServers:      true,
		LastContactThreshold:    m.cfg.LastContactThreshold,
		MaxTrailingLogs:         m.cfg.MaxTrailingLogs,
		ServerStabilizationTime: m.cfg.StabilizationTime,
	}
}

// NotifyState keeps autopilot's latest state for Members and removals,
// and since when each member has been healthy, for promotions: from its
// first healthy round, earlier by the time the previous leader had found
// it healthy (predecessorCredit); a round where it is unhealthy only by
// the term lag of a new leadership (termLagOnlyLocked) neither starts nor ends
// the count. A round computed before this leader's first entry was written
// is dropped. DESIGN.md, "Membership".
func (m *membership) NotifyState(s *autopilot.State) {
	now := time.Now()
	term := m.n.raft.CurrentTerm()
	m.mu.Lock()
	fresh, heard := term != m.mu.leaderTerm, m.mu.heard
	m.mu.Unlock()
	var credit map[string]time.Duration
	var prev uint64
	if fresh {
		credit, prev = m.predecessorCredit(term, heard, now)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if fresh {
		m.mu.leaderTerm, m.mu.prevTerm, m.mu.leaderSince, m.mu.credit = term, prev, now, credit
		clear(m.mu.carried)
		clear(m.mu.waitLogged)
	}
	var leaderIndex uint64
	if l, ok := s.Servers[s.Leader]; ok {
		if l.Stats.LastTerm < term {
			// Computed before this leader's first entry was written (its
			// first round runs as it takes office): autopilot compared the
			// members with the previous leader's term, and found those
			// that have not heard of this one healthy. Not a verdict.
			return
		}
		leaderIndex = l.Stats.LastIndex
	}
	m.mu.state, m.mu.stateTerm = s, term
	for sid, srv := range s.Servers {
		id := string(sid)
		_, ok := m.mu.healthySince[id]
		switch {
		case srv.Health.Healthy && !ok:
			since := now
			if c, ok := m.mu.credit[id]; ok {
				since = now.Add(-c)
				m.mu.carried[id] = c
			}
			m.mu.healthySince[id] = since
			delete(m.mu.credit, id)
		case !srv.Health.Healthy && !m.termLagOnlyLocked(srv, leaderIndex, now):
			delete(m.mu.healthySince, id)
			delete(m.mu.credit, id)
		}
	}
	maps.DeleteFunc(m.mu.healthySince, func(id string, _ time.Time) bool { return s.Servers[raft.ServerID(id)] == nil })
}

// predecessorCredit returns how long the previous leader had found each
// non-voter healthy at every round (memberMeta.Stable, as this node last
// read it in that leader's gossip while following it), and that leader's
// term, the newest below term in this node's log (0 if not found). No
// credit unless the report is that leader's: then no leader in between has
// an entry in this log, so none committed one (this node won an election
// without it), and none led with a quorum following it; nor unless it was
// heard within creditAge of now.
func (m *membership) predecessorCredit(term uint64, heard stableReport, now time.Time) (map[string]time.Duration, uint64) {
	prev, ok := m.termBefore(term)
	if !ok || heard.term != prev || now.Sub(heard.at) > m.creditAge() {
		return nil, prev
	}
	credit := make(map[string]time.Duration, len(heard.stable))
	for id, ms := range heard.stable {
		if ms > 0 {
			credit[id] = time.Duration(ms) * time.Millisecond
		}
	}
	return credit, prev
}

// creditAge bounds how old the predecessor's report may be when a new
// leader carries it over: a leader gossips it every UpdateInterval, and an
// election takes a second or two. A report heard before a longer
// leaderless stretch says nothing of the gap, when a non-voter may have
// restarted (a review found it carried over whatever its age).
func (m *membership) creditAge() time.Duration { return max(3*m.cfg.UpdateInterval, 2*time.Second) }

// termBefore returns the term of the newest entry below term in this
// node's log, looking at its newest logCacheEntries entries (in memory);
// false if none of them is.
func (m *membership) termBefore(term uint64) (uint64, bool) {
	last := m.n.raft.LastIndex()
	var l raft.Log
	for idx := last; idx > 0 && last-idx < logCacheEntries; idx-- {
		if err := m.n.logs.GetLog(idx, &l); err != nil {
			return 0, false
		}
		if l.Term < term {
			return l.Term, true
		}
	}
	return 0, false
}

// termLagOnlyLocked reports whether srv is unhealthy to autopilot only by
// its term, which is the previous leader's, within two UpdateIntervals of
// this leadership's first round: a follower gossips the new term once
// this leader's first entry reaches it (run), at its next stats tick at
// the latest, and gossip takes a round or two to carry it. Every other
// check is autopilot's (isHealthy in raft-autopilot v0.3.0). m.mu is held.
func (m *membership) termLagOnlyLocked(srv *autopilot.ServerState, leaderIndex uint64, now time.Time) bool {
	st := srv.Stats
	return m.mu.prevTerm != 0 && st.LastTerm == m.mu.prevTerm && now.Sub(m.mu.leaderSince) <= 2*m.cfg.UpdateInterval &&
		srv.Server.NodeStatus == autopilot.NodeAlive &&
		st.LastContact >= 0 && st.LastContact <= m.cfg.LastContactThreshold &&
		st.LastIndex+m.cfg.MaxTrailingLogs >= leaderIndex
}

// stableFor reports whether member id has been healthy at every round of
// autopilot for at least d.
func (m *membership) stableFor(id string, d time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	since, ok := m.mu.healthySince[id]
	return ok && time.Since(since) >= d
}

// FetchServerStats returns each server's stats as it last gossiped them
// (a node gossips them only when they change, so they are not aged: a
// member that stops is found by gossip's failure detection instead); the
// leader's own from raft.
func (m *membership) FetchServerStats(_ context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	out := make(map[raft.ServerID]*autopilot.ServerStats, len(servers))
	for id := range servers {
		if string(id) == m.n.cfg.ID {
			out[id] = &autopilot.ServerStats{LastContact: 0, LastTerm: m.lastLogTerm(), LastIndex: m.n.raft.LastIndex()}
			continue
		}
		mb, ok := m.g.member(string(id))
		if !ok || !mb.metaOK || mb.state != memberlist.StateAlive || mb.meta.LastContactMs < 0 {
			continue
		}
		if mb.meta.Fresh {
			// Its vote gate is still shut: it has not yet seen itself added
			// as a non-voter. Promoted now, it would be a voter that grants
			// no votes, and, gossiping Fresh, one the reconcile loop takes
			// for a voter that lost its state and removes again. A
			// negative last contact is unhealthy to autopilot and
			// overrides the stats it kept from earlier rounds.
			out[id] = &autopilot.ServerStats{LastContact: -1}
			continue
		}
		// A member's index is a second or so old when it arrives; under
		// load the leader's moved on meanwhile. Compare it with where the
		// leader was when it arrived, and report the same lag behind the
		// leader's index now, so that a member keeping pace is not taken
		// for one lagging by a second of writes.
		lag := uint64(0)
		if at := m.indexAt(mb.updated); at > mb.meta.LastIndex {
			lag = at - mb.meta.LastIndex
		}
		now := m.n.raft.LastIndex()
		out[id] = &autopilot.ServerStats{
			LastContact: time.Duration(mb.meta.LastContactMs) * time.Millisecond,
			LastTerm:    mb.meta.LastTerm,
			LastIndex:   now - min(now, lag),
		}
	}
	return out
}

// KnownServers returns every server of the Raft configuration with its
// gossip status (alive, failed, left, or unknown when never seen), and
// keeps, for each, since when it has not been alive.
func (m *membership) KnownServers() map[raft.ServerID]*autopilot.Server {
	cfg, _, err := m.configuration()
	if err != nil {
		return nil
	}
	leader, _ := m.n.Leader()
	out := make(map[raft.ServerID]*autopilot.Server, len(cfg.Servers))
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range cfg.Servers {
		id := string(s.ID)
		// NodeType must be set here too: autopilot counts potential voters
		// for its removal arithmetic from these, and a server without a
		// voter type is never removed.
		srv := &autopilot.Server{ID: s.ID, Name: id, Address: s.Address, NodeStatus: autopilot.NodeUnknown,
			RaftVersion: raft.ProtocolVersionMax, IsLeader: id == leader, NodeType: autopilot.NodeVoter}
		if id == m.n.cfg.ID {
			srv.NodeStatus = autopilot.NodeAlive
		} else if mb, ok := m.g.member(id); ok {
			srv.Version = mb.meta.Version
			switch mb.state {
			case memberlist.StateAlive, memberlist.StateSuspect:
				srv.NodeStatus = autopilot.NodeAlive
			case memberlist.StateDead:
				srv.NodeStatus = autopilot.NodeFailed
			case memberlist.StateLeft:
				srv.NodeStatus = autopilot.NodeLeft
			}
			if mb.meta.Removed {
				srv.NodeStatus = autopilot.NodeLeft
			}
			if mb.metaOK && mb.meta.NonVoter {
				srv.NodeType = nodeNonVoter
			}
		}
		if srv.NodeStatus == autopilot.NodeAlive {
			delete(m.mu.downSince, id)
		} else if _, ok := m.mu.downSince[id]; !ok {
			m.mu.downSince[id] = now
		}
		out[s.ID] = srv
	}
	return out
}

// RemoveFailedServer is autopilot's choice of a failed server it may
// remove within failure tolerance: a member that left is removed now; a
// dead one only once it has been down DeadServerTimeout; never the leader.
func (m *membership) RemoveFailedServer(srv *autopilot.Server) {
	id := string(srv.ID)
	if id == m.n.cfg.ID {
		return
	}
	m.mu.Lock()
	since, known := m.mu.downSince[id]
	m.mu.Unlock()
	if srv.NodeStatus != autopilot.NodeLeft && (!known || time.Since(since) < m.cfg.DeadServerTimeout) {
		return
	}
	why := "it left"
	if srv.NodeStatus != autopilot.NodeLeft {
		why = fmt.Sprintf("down for %v (dead-server-timeout %v)", time.Since(since).Round(time.Millisecond), m.cfg.DeadServerTimeout)
	}
	m.removeInBackground(id, func() {
		// Gossip's word that a member left or died is anyone's with the
		// gossip key: remove it only if it does not answer, as itself, where
		// Raft would reach it (prove).
		if len(m.prove([]claim{{kind: claimGone, id: id, addr: string(srv.Address)}})) == 0 {
			return
		}
		m.log.Warn("removing a failed member", "member", id, "why", why)
		// Autopilot already kept this within failure tolerance: force.
		ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ApplyTimeout)
		defer cancel()
		if _, err := m.remove(ctx, id, true); err != nil {
			m.log.Warn("remove a failed member", "member", id, "err", err)
		}
	})
}

// removeInBackground runs remove, a removal of member id, on a goroutine
// of its own, unless one for id is running or the node is closing.
func (m *membership) removeInBackground(id string, remove func()) {
	m.mu.Lock()
	if m.mu.removing[id] || m.closing() {
		m.mu.Unlock()
		return
	}
	m.mu.removing[id] = true
	m.wg.Add(1) // under m.mu: close has not begun its Wait (see close)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.mu.removing, id)
			m.mu.Unlock()
		}()
		remove()
	}()
}

// promoter is autopilot's stable promoter, except that a member that asks
// to stay a non-voter (GossipConfig.NonVoter) is never promoted.
type promoter struct {
	autopilot.StablePromoter
	m *membership
}

const nodeNonVoter autopilot.NodeType = "non-voter"

// staysNonVoter reports whether member id asks never to be promoted
// (GossipConfig.NonVoter).
func (m *membership) staysNonVoter(id raft.ServerID) bool {
	if string(id) == m.n.cfg.ID {
		return m.cfg.NonVoter
	}
	mb, ok := m.g.member(string(id))
	return ok && mb.metaOK && mb.meta.NonVoter
}

func (p *promoter) GetNodeTypes(_ *autopilot.Config, s *autopilot.State) map[raft.ServerID]autopilot.NodeType {
	out := make(map[raft.ServerID]autopilot.NodeType, len(s.Servers))
	for id := range s.Servers {
		out[id] = autopilot.NodeVoter
		if p.m.staysNonVoter(id) {
			out[id] = nodeNonVoter
		}
	}
	return out
}

// CalculatePromotionsAndDemotions promotes the stable promoter's choices
// that may be voters and have been healthy for the whole stabilization
// time, counted here (stableFor) rather than by autopilot. Autopilot
// v0.3.0 never moves a server's StableSince once it is in its state (the
// health it compares with is the one it has just overwritten), so a
// member counts as stable from when it entered the leader's state, healthy
// or not since; and it waives the stabilization time altogether while it
// has run for less than that on this leader. A member that joined, or
// came back empty under its id, was promoted as soon as it was healthy:
// 1.6 s after its add in a chaos run; TestReaddedNodeWaitsStabilization,
// 0.1-0.5 s after its vote gate opened with a stabilization time of 3 s.
// A new leader carries over the time the previous one had counted
// (NotifyState), so elections do not restart the count; one that waits is
// logged once per leadership.
func (p *promoter) CalculatePromotionsAndDemotions(c *autopilot.Config, s *autopilot.State) autopilot.RaftChanges {
	ch := p.StablePromoter.CalculatePromotionsAndDemotions(c, s)
	ch.Promotions = slices.DeleteFunc(ch.Promotions, func(id raft.ServerID) bool {
		return p.m.staysNonVoter(id) || !p.m.stableFor(string(id), c.ServerStabilizationTime)
	})
	for id, srv := range s.Servers {
		if srv.State == autopilot.RaftNonVoter && srv.Health.Healthy && !slices.Contains(ch.Promotions, id) && !p.m.staysNonVoter(id) {
			p.m.logWait(string(id), c.ServerStabilizationTime)
		}
	}
	return ch
}

// logWaitMsg is logWait's message.
const logWaitMsg = "a healthy non-voter waits to have been healthy for the stabilization time before its promotion"

// logWait logs, once per member and leadership, that non-voter id,
// healthy now, waits for the stabilization time d before its promotion,
// and since when it counts.
func (m *membership) logWait(id string, d time.Duration) {
	m.mu.Lock()
	since, counted := m.mu.healthySince[id]
	logged := m.mu.waitLogged[id]
	m.mu.waitLogged[id] = logged || counted
	carried, term := m.mu.carried[id], m.mu.leaderTerm
	m.mu.Unlock()
	if logged || !counted {
		return
	}
	m.log.Info(logWaitMsg, "member", id, "term", term, "healthy_since", since,
		"healthy_for", time.Since(since).Round(time.Millisecond), "carried_over", carried, "stabilization", d)
}
