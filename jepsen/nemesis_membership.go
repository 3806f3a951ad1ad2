//go:build unix

package jepsen

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Membership timings of a chaos run's nodes (serve flags). The dead-server
// timeout is short enough for a replacement to finish within a fault, and
// longer than any other fault keeps a node down or paused (at most a lease
// plus 2s, about 4s, plus gossip's few seconds to declare it dead), so that
// no other fault gets a node removed.
const (
	chaosDeadServerTimeout = 10 * time.Second
	chaosStabilization     = time.Second
	// chaosSpares are node slots prepared beyond the cluster's size, for
	// fresh nodes; a membership fault takes one and gives one back.
	chaosSpares = 2
	// membershipSettle bounds how long a membership heal waits for the
	// configuration to reach its voters.
	membershipSettle = 90 * time.Second
)

// memberSlots tracks which node slots (n1..) are members of the cluster
// and which are spares: not running, data wiped, ready to start fresh. It
// is safe for concurrent use.
type memberSlots struct {
	mu      sync.Mutex
	members []string // sorted by slot number
	spares  []string
}

func newMemberSlots(members, spares []string) *memberSlots {
	return &memberSlots{members: slices.Clone(members), spares: slices.Clone(spares)}
}

func slotNum(id string) int { n, _ := strconv.Atoi(id[1:]); return n }

func sortSlots(ids []string) {
	sort.Slice(ids, func(i, j int) bool { return slotNum(ids[i]) < slotNum(ids[j]) })
}

func (s *memberSlots) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.members)
}

// take moves a spare to the members and returns it; "" if none is left.
func (s *memberSlots) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.spares) == 0 {
		return ""
	}
	id := s.spares[0]
	s.spares = s.spares[1:]
	s.members = append(s.members, id)
	sortSlots(s.members)
	return id
}

// free moves a member back to the spares.
func (s *memberSlots) free(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members = slices.DeleteFunc(s.members, func(m string) bool { return m == id })
	s.spares = append(s.spares, id)
}

// memberIDs returns the members now; without membership tracking, every
// node of the cluster.
func (n *nemesis) memberIDs() []string {
	if n.ms != nil {
		return n.ms.list()
	}
	var out []string
	for _, nd := range n.cluster.Nodes() {
		out = append(out, nd.ID())
	}
	return out
}

// member maps a schedule's node name nK to the K-th member now (members
// change over a run with membership faults); a name beyond them stays as
// it is.
func (n *nemesis) member(name string) string {
	ids := n.memberIDs()
	if k := slotNum(name); k >= 1 && k <= len(ids) {
		return ids[k-1]
	}
	return name
}

// voters asks the leader for the voters.
func (n *nemesis) voters(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := proc.OnLeader(ctx, n.cluster.Admin(), func(ctx context.Context, c pb.LeaseholdClient) (*pb.MembersResponse, error) {
		return c.Members(ctx, &pb.MembersRequest{})
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mb := range m.GetMembers() {
		if mb.GetSuffrage() == pb.Suffrage_SUFFRAGE_VOTER {
			out = append(out, mb.GetId())
		}
	}
	sortSlots(out)
	return out, nil
}

// waitVoters waits until the voters are exactly the members, at most
// limit.
func (n *nemesis) waitVoters(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last []string
	var err error
	for {
		want := n.memberIDs()
		if last, err = n.voters(ctx); err == nil && slices.Equal(last, want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("voters %v, want %v after %v (%v)", last, want, limit, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startFresh wipes slot id's data and starts it: a fresh node that joins.
func (n *nemesis) startFresh(id string) error {
	nd := n.cluster.Node(id)
	if nd == nil {
		return fmt.Errorf("no node slot %s", id)
	}
	if err := os.RemoveAll(nd.Spec().Data); err != nil {
		return err
	}
	return nd.Start()
}

// retire stops slot id (gracefully: with --leave-on-terminate it asks to be
// removed first, quick if it already is) and wipes its data.
func (n *nemesis) retire(id string) error {
	nd := n.cluster.Node(id)
	if nd == nil {
		return fmt.Errorf("no node slot %s", id)
	}
	err := nd.Stop(20 * time.Second)
	return errors.Join(err, os.RemoveAll(nd.Spec().Data))
}

// applyMembership starts a membership fault.
func (n *nemesis) applyMembership(f Fault, t targets) {
	switch f.Kind {
	case MemberAdd:
		id := n.ms.take()
		if id == "" {
			n.logf("nemesis: %s: no spare node slot", f.Kind)
			return
		}
		n.added = id
		n.step(OpJoin, id, []*proc.Process{nil}, func(*proc.Process) error { return n.startFresh(id) })
	case MemberRemove:
		if len(t.nodes) == 0 {
			return
		}
		victim := t.nodes[0]
		n.step(OpLeave, t.label, []*proc.Process{nil}, func(*proc.Process) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := proc.OnLeader(ctx, n.cluster.Admin(), func(ctx context.Context, c pb.LeaseholdClient) (*pb.RemoveMemberResponse, error) {
				return c.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: victim})
			})
			if err != nil {
				return fmt.Errorf("remove %s: %w", victim, err)
			}
			n.ms.free(victim)
			return n.retire(victim)
		})
		if id := n.ms.take(); id != "" {
			n.step(OpJoin, id, []*proc.Process{nil}, func(*proc.Process) error { return n.startFresh(id) })
		}
	case MemberReplace:
		if len(t.nodes) == 0 {
			return
		}
		victim := t.nodes[0]
		n.step(OpKill, t.label, n.procs(t), (*proc.Process).Kill)
		if nd := n.cluster.Node(victim); nd != nil {
			_ = os.RemoveAll(nd.Spec().Data)
		}
		if id := n.ms.take(); id != "" {
			n.step(OpJoin, id, []*proc.Process{nil}, func(*proc.Process) error { return n.startFresh(id) })
		}
	}
}

// healMembership ends a membership fault: the added node leaves again;
// after a removal, the replacement is promoted; after a replacement, the
// dead voter is removed (its dead-server timeout) and the fresh one
// promoted. Each waits until the voters are the members.
func (n *nemesis) healMembership(f Fault, t targets) {
	switch f.Kind {
	case MemberAdd:
		// The node it added leaves, once it was promoted.
		added := n.added
		if added == "" {
			return
		}
		n.added = ""
		n.step(OpLeave, added, []*proc.Process{nil}, func(*proc.Process) error {
			errWait := n.waitVoters(membershipSettle)
			n.ms.free(added)
			return errors.Join(errWait, n.retire(added), n.waitVoters(membershipSettle))
		})
	case MemberRemove:
		n.step(OpHeal, t.label, []*proc.Process{nil}, func(*proc.Process) error { return n.waitVoters(membershipSettle) })
	case MemberReplace:
		if len(t.nodes) == 0 {
			return
		}
		victim := t.nodes[0]
		n.ms.free(victim)
		n.step(OpLeave, t.label, []*proc.Process{nil}, func(*proc.Process) error { return n.waitVoters(membershipSettle) })
	}
}
