package cluster

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// peerState is what a peer told a probe: its current term and last log
// index, or why it did not answer.
type peerState struct {
	peer    Peer
	term    uint64
	lastLog uint64
	err     error
}

// formed reports whether the peer belongs to a cluster that has moved past
// its bootstrap: a term or a log entry beyond the ones BootstrapCluster
// writes (term 1, the configuration at index 1). A peer that bootstrapped
// and has not elected yet, or an empty node probing too, has not.
func (p peerState) formed() bool { return p.err == nil && (p.term > 1 || p.lastLog > 1) }

// errNotStarted answers every Raft RPC but a probe while an empty node
// decides whether to bootstrap.
var errNotStarted = errors.New("leasehold: this node has no Raft state yet and is deciding whether to bootstrap")

// probePeers asks every peer but this node, all at once, for its current
// term and last log index, with an AppendEntries of term 0. Raft answers an
// AppendEntries of an older term with its own term and last index and
// changes nothing (hashicorp/raft appendEntries: "Ignore an older term");
// every running node has term 1 at least, since bootstrap writes it. A peer
// that is still deciding answers term 0 (answerAsEmpty). Each probe dials
// through dial, the node's own stream layer, and is bounded by timeout for
// the dial and again for the answer; a peer that is down or unreachable is a
// peerState with an error, not a wait beyond that. target, if set, turns a
// peer's id and address into what dial expects (the mutual-TLS transport's
// "host:port#id"), as the node's own transport would.
func probePeers(self Peer, peers []Peer, provider raft.ServerAddressProvider,
	target func(raft.ServerID, raft.ServerAddress) raft.ServerAddress,
	dial func(raft.ServerAddress, time.Duration) (net.Conn, error), timeout time.Duration, logger hclog.Logger) []peerState {
	trans := newProbeTransport(self.RaftAddr, provider, dial, timeout, logger)
	defer trans.Close()

	var out []peerState
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range peers {
		if p.ID == self.ID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &raft.AppendEntriesRequest{
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax,
					ID: []byte(self.ID), Addr: []byte(self.RaftAddr)},
				Term: 0,
			}
			var resp raft.AppendEntriesResponse
			addr := raft.ServerAddress(p.RaftAddr)
			if target != nil {
				addr = target(raft.ServerID(p.ID), addr)
			}
			err := trans.AppendEntries(raft.ServerID(p.ID), addr, req, &resp)
			st := peerState{peer: p, term: resp.Term, lastLog: resp.LastLog, err: err}
			mu.Lock()
			out = append(out, st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].peer.ID < out[j].peer.ID })
	return out
}

// describePeers summarises probe results for a log line or an error.
func describePeers(states []peerState) string {
	var parts []string
	for _, s := range states {
		switch {
		case s.err != nil:
			parts = append(parts, fmt.Sprintf("%s: no answer (%v)", s.peer.ID, s.err))
		default:
			parts = append(parts, fmt.Sprintf("%s: term %d, last log index %d", s.peer.ID, s.term, s.lastLog))
		}
	}
	return strings.Join(parts, "; ")
}

// answerAsEmpty answers the RPCs that reach trans while this node, which has
// no Raft state, decides whether to bootstrap: a probe (or any
// AppendEntries) gets term 0 and last index 0, anything else errNotStarted.
// It grants no vote and accepts no entry. stop ends it and returns once it
// no longer takes RPCs, so that raft can take them.
func answerAsEmpty(trans raft.Transport) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-done:
				return
			case rpc := <-trans.Consumer():
				if _, ok := rpc.Command.(*raft.AppendEntriesRequest); ok {
					rpc.Respond(&raft.AppendEntriesResponse{}, nil)
					continue
				}
				rpc.Respond(nil, errNotStarted)
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// dialOnlyStream is the raft.StreamLayer of a probe: it dials through the
// node's own stream layer and accepts nothing.
type dialOnlyStream struct {
	dial      func(raft.ServerAddress, time.Duration) (net.Conn, error)
	addr      net.Addr
	closed    chan struct{}
	closeOnce sync.Once
}

func (s *dialOnlyStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.dial(addr, timeout)
}

// Accept waits until the stream is closed: a probe takes no connections.
func (s *dialOnlyStream) Accept() (net.Conn, error) {
	<-s.closed
	return nil, errClosed
}

func (s *dialOnlyStream) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

func (s *dialOnlyStream) Addr() net.Addr { return s.addr }
