package cluster

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// errVoteGated answers a vote or pre-vote that a fresh node is not yet
// allowed to grant.
var errVoteGated = errors.New("leasehold: this node started with no Raft state and grants no vote until the leader has added it as a non-voter")

// voteGate is the Raft transport of a node that started fresh (empty, to be
// added by a leader): until opened, it answers every RequestVote and
// RequestPreVote with an error, so the node grants no vote. A node that
// lost its state may have voted in a term it no longer remembers; it may
// vote again only once the leader has removed its old self and added it
// back as a non-voter (or added it, new), and it has seen that
// configuration (DESIGN.md, "Membership"). Everything else passes through,
// heartbeats on their fast path as before. It is safe for concurrent use.
type voteGate struct {
	raftTransport
	ch     chan raft.RPC
	open   atomic.Bool
	stop   chan struct{}
	done   chan struct{}
	closer sync.Once
}

func newVoteGate(t raftTransport) *voteGate {
	g := &voteGate{raftTransport: t, ch: make(chan raft.RPC), stop: make(chan struct{}), done: make(chan struct{})}
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
				switch rpc.Command.(type) {
				case *raft.RequestVoteRequest, *raft.RequestPreVoteRequest:
					rpc.Respond(nil, errVoteGated)
					continue
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

// Consumer is where raft reads the RPCs the gate lets through.
func (g *voteGate) Consumer() <-chan raft.RPC { return g.ch }

// RequestPreVote keeps pre-vote on: raft uses it only if the transport has
// it.
func (g *voteGate) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
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
