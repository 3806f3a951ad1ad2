package cluster

import (
	"errors"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// errPartitioned is what a partitioned node's Raft RPC to a peer on the
// other side fails with.
var errPartitioned = errors.New("test partition: peer unreachable")

// partition cuts Raft between groups of test nodes: every node's transport
// (Config.wrapTransport, set by option) refuses the RPCs it would send to a
// node on another side, so both directions of a cut pair fail (every Raft
// exchange is a request its sender starts). Gossip and the leader's
// proofs (a dial of their own) are not cut. It is safe for concurrent use.
type partition struct {
	mu    sync.Mutex
	side  map[string]int    // node id → side; absent: joined to every side
	muted map[string]bool   // node ids whose vote and pre-vote requests fail
	asked map[[2]string]int // (from, to) → pre-vote requests sent, not cut
}

// split puts each group of ids on a side of its own; nodes named in no
// group reach everyone.
func (p *partition) split(groups ...[]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.side = map[string]int{}
	for i, g := range groups {
		for _, id := range g {
			p.side[id] = i + 1
		}
	}
}

// heal joins every node again.
func (p *partition) heal() { p.split() }

// mute makes every vote and pre-vote request id sends fail, whatever the
// sides: it cannot be elected, and still votes.
func (p *partition) mute(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted == nil {
		p.muted = map[string]bool{}
	}
	p.muted[id] = true
}

// preVotes returns how many pre-vote requests from sent to to, past the
// partition.
func (p *partition) preVotes(from, to string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.asked[[2]string{from, to}]
}

// campaign reports whether from may ask to for its (pre-)vote, and counts
// a pre-vote that may go.
func (p *partition) campaign(from string, to raft.ServerID, pre bool) bool {
	if p.cut(from, to) {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted[from] {
		return false
	}
	if pre {
		if p.asked == nil {
			p.asked = map[[2]string]int{}
		}
		p.asked[[2]string{from, string(to)}]++
	}
	return true
}

func (p *partition) cut(from string, to raft.ServerID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, b := p.side[from], p.side[string(to)]
	return a != 0 && b != 0 && a != b
}

// option installs the partition on a node's transport.
func (p *partition) option(c *Config) {
	id := c.ID
	c.wrapTransport = func(t raftTransport) raftTransport { return &partitionedTransport{raftTransport: t, p: p, self: id} }
}

// partitionedTransport is a node's Raft transport behind a partition.
type partitionedTransport struct {
	raftTransport
	p    *partition
	self string
}

func (t *partitionedTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported // as the node's own transport, MaxRPCsInFlight 1
}

func (t *partitionedTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if t.p.cut(t.self, id) {
		return errPartitioned
	}
	return t.raftTransport.AppendEntries(id, target, args, resp)
}

func (t *partitionedTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if !t.p.campaign(t.self, id, false) {
		return errPartitioned
	}
	return t.raftTransport.RequestVote(id, target, args, resp)
}

func (t *partitionedTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if !t.p.campaign(t.self, id, true) {
		return errPartitioned
	}
	pv, ok := t.raftTransport.(raft.WithPreVote)
	if !ok {
		return errors.New("transport has no pre-vote")
	}
	return pv.RequestPreVote(id, target, args, resp)
}

func (t *partitionedTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if t.p.cut(t.self, id) {
		return errPartitioned
	}
	return t.raftTransport.InstallSnapshot(id, target, args, resp, data)
}

func (t *partitionedTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	if t.p.cut(t.self, id) {
		return errPartitioned
	}
	return t.raftTransport.TimeoutNow(id, target, args, resp)
}
