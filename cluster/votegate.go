package cluster

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// errVoteGated answers a vote or pre-vote that a fresh node is not yet
// allowed to grant. Its text crosses raft's wire, where askMember compares
// it: keep it as it is.
var errVoteGated = errors.New("leasehold: this node started with no Raft state and grants no vote until the leader has added it as a non-voter")

// errNotCaughtUp answers a vote, pre-vote or TimeoutNow that a static
// replacement is not yet allowed to act on.
var errNotCaughtUp = errors.New("leasehold: this node started as a fresh replacement and grants no vote until it holds every entry committed before it came back")

// errAsksNoVote is what a node behind a shut vote gate gets when its raft
// campaigns: it asks for no vote, so that its own counts for no one.
var errAsksNoVote = errors.New("leasehold: this node started with no Raft state and asks for no vote until its vote gate opens")

// gateCheckInterval is how often a static replacement checks whether it
// has caught up enough to open its vote gate.
const gateCheckInterval = 50 * time.Millisecond

// voteGate is the Raft transport of a node that started fresh (empty, to be
// filled in by a leader): until opened, it answers every RequestVote,
// RequestPreVote and TimeoutNow with refusal, and fails every vote and
// pre-vote its own raft asks for, so the node neither votes nor campaigns.
// A node that lost its state may have voted in a term it no longer
// remembers, and acknowledged entries it no longer holds; its vote (its
// own, as a candidate, included) could elect a leader without them. It may
// vote again only once the leader has removed its old self and added it
// back as a non-voter (or added it, new), and it has seen that
// configuration (membership), or, in a static cluster, once it holds every
// entry committed before it came back (caughtUp). DESIGN.md, "Membership"
// and "Storage and start-up". Everything else passes through, heartbeats on
// their fast path as before. It is safe for concurrent use.
type voteGate struct {
	raftTransport
	refusal error // what an incoming request is answered while shut
	ch      chan raft.RPC
	open    atomic.Bool
	stop    chan struct{}
	done    chan struct{}
	closer  sync.Once

	// announced is the commit index that the leader of the highest term
	// seen so far announced first, in an AppendEntries that reached the
	// gate while it was shut.
	announced struct {
		sync.Mutex
		term, commit uint64
	}
}

func newVoteGate(t raftTransport, refusal error) *voteGate {
	g := &voteGate{raftTransport: t, refusal: refusal, ch: make(chan raft.RPC), stop: make(chan struct{}), done: make(chan struct{})}
	go g.run()
	return g
}

func (g *voteGate) run() {
	defer close(g.done)
	in := g.raftTransport.Consumer()
	for {
		select {
		case <-g.stop:
			return
		case rpc := <-in:
			if !g.open.Load() {
				switch req := rpc.Command.(type) {
				case *raft.RequestVoteRequest, *raft.RequestPreVoteRequest, *raft.TimeoutNowRequest:
					rpc.Respond(nil, g.refusal)
					continue
				case *raft.AppendEntriesRequest:
					g.announce(req.Term, req.LeaderCommitIndex)
				}
			}
			select {
			case g.ch <- rpc:
			case <-g.stop:
				rpc.Respond(nil, errClosed)
				return
			}
		}
	}
}

// announce records commit as the first commit index announced in term, if
// term is higher than any seen before. Only the leader of a term sends
// AppendEntries of that term (a probe's are of term 0). A commit index of 0
// announces nothing: a heartbeat carries none, and reaches the gate before
// raft has installed its fast path.
func (g *voteGate) announce(term, commit uint64) {
	g.announced.Lock()
	defer g.announced.Unlock()
	if commit > 0 && term > g.announced.term {
		g.announced.term, g.announced.commit = term, commit
	}
}

// firstCommit returns the commit index the leader of term announced first,
// if an AppendEntries of term has reached the gate.
func (g *voteGate) firstCommit(term uint64) (uint64, bool) {
	g.announced.Lock()
	defer g.announced.Unlock()
	return g.announced.commit, term != 0 && g.announced.term == term
}

// Consumer is where raft reads the RPCs the gate lets through.
func (g *voteGate) Consumer() <-chan raft.RPC { return g.ch }

// RequestVote asks target for its vote, once the gate is open.
func (g *voteGate) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if !g.open.Load() {
		return errAsksNoVote
	}
	return g.raftTransport.RequestVote(id, target, args, resp)
}

// RequestPreVote keeps pre-vote on (raft uses it only if the transport
// has it) and asks target for its pre-vote, once the gate is open.
func (g *voteGate) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if !g.open.Load() {
		return errAsksNoVote
	}
	pv, ok := g.raftTransport.(raft.WithPreVote)
	if !ok {
		return errors.New("transport has no pre-vote")
	}
	return pv.RequestPreVote(id, target, args, resp)
}

// Close stops the gate's goroutine and closes the transport.
func (g *voteGate) Close() error {
	g.closer.Do(func() { close(g.stop) })
	<-g.done
	return g.raftTransport.Close()
}

// openGate opens g, this fresh node's vote gate, for good: gateFile goes,
// so a restart no longer starts the node behind it. Opened first: a crash
// in between starts it behind the gate again, which is safe.
func (n *Node) openGate(g *voteGate) {
	g.open.Store(true)
	if err := removeGateFile(n.cfg.Dir); err != nil {
		n.log.Warn("the vote gate opened, but "+gateFile+" could not be removed: if the node restarts, it grants no vote until it has caught up again",
			"err", err)
	}
}

// openVoteGateOnceCaughtUp opens n.gate, a static replacement's, once
// caughtUp says so, checking every gateCheckInterval until then or until
// the node closes.
func (n *Node) openVoteGateOnceCaughtUp(snaps raft.SnapshotStore) {
	defer n.wg.Done()
	tick := time.NewTicker(gateCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-tick.C:
		}
		ok, err := n.caughtUp(snaps)
		if err != nil {
			n.log.Debug("vote gate: read the entry at the commit index", "err", err)
			continue
		}
		if ok {
			n.openGate(n.gate)
			n.log.Info("caught up as a replacement: it votes, and campaigns, from now on",
				"term", n.raft.CurrentTerm(), "commit_index", n.raft.CommitIndex())
			return
		}
	}
}

// caughtUp reports whether this node, started empty as a replacement,
// holds every entry committed before it came back: its commit index has
// reached the one the leader of its current term announced to it first,
// and the entry there is of that term. A follower's log matches its
// leader's up to its commit index. An entry of the leader's own term lies
// above every entry committed in earlier terms (the leader held them all
// when elected, Raft §5.4), and the commit index the leader announced
// after the node came back lies at or above every entry of the leader's
// term that was committed (acknowledged) before. hashicorp/raft commits an
// entry at the start of every term, so this holds promptly on an idle
// cluster too.
func (n *Node) caughtUp(snaps raft.SnapshotStore) (bool, error) {
	term := n.raft.CurrentTerm()
	announced, ok := n.gate.firstCommit(term)
	commit := n.raft.CommitIndex()
	if !ok || commit == 0 || commit < announced {
		return false, nil
	}
	t, err := n.termAt(commit, snaps)
	return t == term, err
}

// termAt returns the term of the entry at index, from the log or, for the
// last entry of the latest snapshot (a node filled in by a snapshot holds
// no entry there), from the snapshot.
func (n *Node) termAt(index uint64, snaps raft.SnapshotStore) (uint64, error) {
	var l raft.Log
	err := n.logs.GetLog(index, &l)
	if err == nil {
		return l.Term, nil
	}
	if !errors.Is(err, raft.ErrLogNotFound) {
		return 0, fmt.Errorf("read log entry %d: %w", index, err)
	}
	metas, err := snaps.List()
	if err != nil {
		return 0, fmt.Errorf("list snapshots: %w", err)
	}
	if len(metas) > 0 && metas[0].Index == index {
		return metas[0].Term, nil
	}
	return 0, nil // compacted away: a later commit will do
}
