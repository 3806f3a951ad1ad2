package cluster

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// campaignsToWatch is how many pre-votes a node left without a leader must
// have sent to a replacement, all in vain, before a test concludes that no
// election can succeed: each one is a campaign of its own, an election
// timeout apart.
const campaignsToWatch = 5

// replaceNode stops node i abruptly, deletes its data directory, and starts
// it again as a fresh replacement (Config.Replace, static peers).
func (c *testCluster) replaceNode(i int) *Node {
	c.t.Helper()
	c.stop(i, true)
	if err := os.RemoveAll(c.cfgs[i].Dir); err != nil {
		c.t.Fatal(err)
	}
	c.cfgs[i].Replace = true
	c.start(i, nil)
	return c.nodes[i]
}

// wantNoLeader waits until from has sent to campaignsToWatch pre-votes,
// and fails the test if a node is elected meanwhile, saying whether the
// acknowledged limit "e" survived.
func wantNoLeader(t *testing.T, c *testCluster, p *partition, from, to string) {
	t.Helper()
	var leader *Node
	waitFor(t, electionWait, "leader, nor enough campaigns of "+from, func() bool {
		for _, n := range c.nodes {
			if n != nil && n.IsLeader() {
				leader = n
				return true
			}
		}
		return p.preVotes(from, to) >= campaignsToWatch
	})
	if leader == nil {
		return
	}
	leader = c.leader() // ready: it has applied its log
	if _, ok := leader.lookup("e"); !ok {
		t.Fatalf("%s was elected with a replacement's vote (%s and %s running) and lacks the limit e, "+
			"whose SetLimit was acknowledged: an acknowledged write is lost", leader.ID(), from, to)
	}
	t.Fatalf("%s was elected with a replacement that had not caught up (%s and %s running)", leader.ID(), from, to)
}

// TestStaticReplacementGrantsNoVoteWithAnEmptyLog: in a static cluster a
// node started as a fresh replacement (Config.Replace) was a voter at once,
// with an empty log, and granted its vote to any candidate. With e
// committed on A and C (B cut off), C's directory lost and C replaced, and A
// failing before C caught up, B was elected with C's vote and e, whose
// SetLimit a client had been answered for, was gone. C now grants no vote
// until it holds every entry committed before it came back: B cannot be
// elected.
func TestStaticReplacementGrantsNoVoteWithAnEmptyLog(t *testing.T) {
	p := &partition{}
	c := newTestCluster(t, 3, p.option)
	ai := c.index(c.leader())
	ci, bi := (ai+1)%3, (ai+2)%3
	a, b, cc := c.cfgs[ai].ID, c.cfgs[bi].ID, c.cfgs[ci].ID
	p.split([]string{b}, []string{a, cc})
	c.setLimit("e", hourly(10)) // committed on A and C

	// C loses its directory and comes back empty; A cannot reach it.
	p.split([]string{a}, []string{b}, []string{cc})
	c.replaceNode(ci)
	// A fails before C has caught up; B and C meet.
	c.stop(ai, true)
	p.heal()
	wantNoLeader(t, c, p, b, cc)
	if c.nodes[ci].gate.open.Load() {
		t.Errorf("%s's vote gate is open; it holds no entry", cc)
	}
}

// TestStaticReplacementPartlyCaughtUpNeitherVotesNorCampaigns: a
// replacement whose commit index has reached an entry of the current term
// may still lack entries of that term committed before it came back: here
// it was sent the first AppendEntries of the log (up to 64 entries, of the
// leader's term unless an election intervened) while e lies further on.
// Its gate stays shut until its commit index reaches the one the leader
// announced first; and, shut, it does not campaign either: its own vote
// and that of B, which received no entry since the first few and is
// further behind, would elect it without e.
func TestStaticReplacementPartlyCaughtUpNeitherVotesNorCampaigns(t *testing.T) {
	pc := partlyCaughtUp(t)
	// A fails; B and C meet.
	pc.aFailsBAndCMeet()
	if pc.r.gate.open.Load() {
		t.Errorf("%s's vote gate is open without e", pc.r.ID())
	}
}

// TestReplacementRestartedBeforeCaughtUpStaysGated: a replacement's vote
// gate lived in memory only. One that stopped before it had caught up came
// back with Raft state (a term, the first entries), so as a node that
// resumes, ungated, and its vote and B's, which is further behind, elected
// it without e. It now starts behind the gate again until it has caught
// up (gateFile).
func TestReplacementRestartedBeforeCaughtUpStaysGated(t *testing.T) {
	pc := partlyCaughtUp(t)
	c, ci := pc.c, pc.ci
	// C stops before it has caught up and starts again on what it holds.
	c.stop(ci, true)
	c.cfgs[ci].Replace = false
	c.start(ci, nil)
	if r := c.nodes[ci]; r.gate == nil || r.gate.open.Load() {
		t.Errorf("%s restarted before it had caught up, with no vote gate shut", r.ID())
	}
	pc.aFailsBAndCMeet()
}

// partlyCaughtUpCluster is three static nodes where C, a replacement, was
// sent the first AppendEntries of the log and not e, committed on A and C
// before C lost its directory; B was sent no entry; every link is cut.
type partlyCaughtUpCluster struct {
	t          *testing.T
	c          *testCluster
	ec         *entryCuts
	ai, bi, ci int
	r          *Node // C
}

func partlyCaughtUp(t *testing.T) *partlyCaughtUpCluster {
	ec := &entryCuts{p: &partition{}}
	c := newTestCluster(t, 3, ec.option)
	ai := c.index(c.leader())
	ci, bi := (ai+1)%3, (ai+2)%3
	a, b, cc := c.cfgs[ai].ID, c.cfgs[bi].ID, c.cfgs[ci].ID
	ec.ids = []string{a, b, cc}
	// B gets heartbeats, so the leader keeps its lease while C is down,
	// and no entry.
	ec.starved.Store(&b)
	for i := range 100 { // beyond the first AppendEntries to a node with an empty log
		c.setLimit(fmt.Sprintf("k%d", i), hourly(10))
	}
	c.setLimit("e", hourly(10)) // committed on A and C

	// C loses its directory and comes back empty; A sends it its first
	// AppendEntries, then every link is cut.
	ec.oneBatchTo.Store(&cc)
	r := c.replaceNode(ci)
	waitFor(t, opWait, cc+" sent its first entries", func() bool { return r.raft.CommitIndex() > 0 })
	if _, ok := r.lookup("e"); ok {
		t.Fatalf("%s received e in its first AppendEntries; the test needs more entries before it", cc)
	}
	return &partlyCaughtUpCluster{t: t, c: c, ec: ec, ai: ai, bi: bi, ci: ci, r: r}
}

// aFailsBAndCMeet stops A, heals the links and fails the test if B or C
// is elected (wantNoLeader).
func (pc *partlyCaughtUpCluster) aFailsBAndCMeet() {
	pc.t.Helper()
	pc.c.stop(pc.ai, true)
	pc.ec.starved.Store(nil)
	pc.ec.p.heal()
	wantNoLeader(pc.t, pc.c, pc.ec.p, pc.c.cfgs[pc.bi].ID, pc.c.cfgs[pc.ci].ID)
}

// TestStaticReplacementVotesOnceCaughtUp: a replacement's vote gate opens
// once it has caught up, and its vote then elects a leader: with A stopped
// and C unable to campaign, only C's vote can elect B.
func TestStaticReplacementVotesOnceCaughtUp(t *testing.T) {
	p := &partition{}
	c := newTestCluster(t, 3, p.option)
	ai := c.index(c.leader())
	ci, bi := (ai+1)%3, (ai+2)%3
	c.setLimit("e", hourly(10))

	r := c.replaceNode(ci)
	waitFor(t, opWait, c.cfgs[ci].ID+"'s vote gate open", r.gate.open.Load)
	if _, ok := r.lookup("e"); !ok {
		t.Fatalf("%s's vote gate opened before it held e", r.ID())
	}
	if hasGateFile(c.cfgs[ci].Dir) {
		t.Errorf("%s's vote gate is open and %s remains: a restart would shut it again", r.ID(), gateFile)
	}
	p.mute(r.ID())
	c.stop(ai, true)
	b := c.nodes[bi]
	if l := c.leader(); l != b {
		t.Fatalf("leader %s, want %s", l.ID(), b.ID())
	}
	if _, ok := b.lookup("e"); !ok {
		t.Errorf("the new leader %s lacks e", b.ID())
	}
}

// TestTermAtReadsASnapshotsLastEntry: a replacement filled in by a
// snapshot holds no log entry at its commit index when nothing was written
// after the snapshot; the snapshot gives that entry's term, so the gate
// opens without waiting for a write. (A cluster test cannot make this
// happen: raft-wal still serves entries compacted away inside its tail
// segment, so the leader sends them rather than a snapshot.)
func TestTermAtReadsASnapshotsLastEntry(t *testing.T) {
	logs, err := newLogStore(raft.NewInmemStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.StoreLogs([]*raft.Log{{Index: 8, Term: 2}, {Index: 9, Term: 3}}); err != nil {
		t.Fatal(err)
	}
	n := &Node{logs: logs}
	snaps := raft.NewInmemSnapshotStore()
	sink, err := snaps.Create(raft.SnapshotVersionMax, 7, 2, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ index, term uint64 }{{7, 2}, {8, 2}, {9, 3}, {6, 0}} {
		if got, err := n.termAt(tc.index, snaps); err != nil || got != tc.term {
			t.Errorf("termAt(%d) = %d, %v; want %d", tc.index, got, err, tc.term)
		}
	}
}

// entryCuts is a partition whose nodes' transports also fail every
// AppendEntries but heartbeats sent to the node named starved, and, once
// oneBatchTo names a node, cut every Raft link (each node on a side of its
// own) right after a node's first AppendEntries with entries that it
// accepts.
type entryCuts struct {
	p          *partition
	ids        []string
	starved    atomic.Pointer[string]
	oneBatchTo atomic.Pointer[string]
	once       sync.Once
}

var errStarved = errors.New("test: no entries for this node")

func (ec *entryCuts) option(c *Config) {
	ec.p.option(c)
	wrap := c.wrapTransport
	c.wrapTransport = func(t raftTransport) raftTransport { return &entryCutTransport{raftTransport: wrap(t), ec: ec} }
}

// cutAll puts every node on a side of its own.
func (ec *entryCuts) cutAll() {
	sides := make([][]string, len(ec.ids))
	for i, id := range ec.ids {
		sides[i] = []string{id}
	}
	ec.p.split(sides...)
}

type entryCutTransport struct {
	raftTransport
	ec *entryCuts
}

func (t *entryCutTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	heartbeat := args.PrevLogEntry == 0 && args.PrevLogTerm == 0 && len(args.Entries) == 0 && args.LeaderCommitIndex == 0
	if s := t.ec.starved.Load(); s != nil && string(id) == *s && !heartbeat {
		return errStarved
	}
	err := t.raftTransport.AppendEntries(id, target, args, resp)
	if to := t.ec.oneBatchTo.Load(); to != nil && string(id) == *to && err == nil && resp.Success && len(args.Entries) > 0 {
		t.ec.once.Do(t.ec.cutAll)
	}
	return err
}

// RequestPreVote keeps pre-vote on.
func (t *entryCutTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.raftTransport.(raft.WithPreVote).RequestPreVote(id, target, args, resp)
}

// TestVoteGateIgnoresAHeartbeatsCommitIndex: a heartbeat that reaches the
// gate before raft has installed its fast path carries commit index 0; the
// gate took it for the leader's first announcement, and a replacement
// then opened its gate at the first entry of the leader's term it
// committed, e still missing
// (TestStaticReplacementPartlyCaughtUpNeitherVotesNorCampaigns saw a leader
// without e elected so, once in five runs). The first commit index
// announced in a term is the first one above 0.
func TestVoteGateIgnoresAHeartbeatsCommitIndex(t *testing.T) {
	_, inner := raft.NewInmemTransport("")
	fc := fakeConsumer{InmemTransport: inner, ch: make(chan raft.RPC)}
	g := newVoteGate(fc, errNotCaughtUp)
	defer g.Close()
	for _, req := range []*raft.AppendEntriesRequest{
		{Term: 0, LeaderCommitIndex: 5}, // a probe
		{Term: 2},                       // a heartbeat
		{Term: 2, LeaderCommitIndex: 10},
		{Term: 2, LeaderCommitIndex: 12},
	} {
		resp := make(chan raft.RPCResponse, 1)
		fc.ch <- raft.RPC{Command: req, RespChan: resp}
		rpc := <-g.Consumer()
		rpc.Respond(nil, nil)
		<-resp
	}
	if got, ok := g.firstCommit(2); !ok || got != 10 {
		t.Fatalf("first commit announced in term 2: %d, %v; want 10, true", got, ok)
	}
	if _, ok := g.firstCommit(3); ok {
		t.Fatal("a commit announced in term 3, where none came")
	}
}
