package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Membership timings for the tests: promotion after 1s of health, a dead
// voter removed 3s after the leader saw it fail.
const (
	testStabilization = time.Second
	testDeadTimeout   = 3 * time.Second
)

// gossipLayout is a layout with membership on, spares to add later, short
// membership timings, and a graceful leave on SIGTERM.
func gossipLayout(spares int) func(*proc.Layout) {
	return func(l *proc.Layout) {
		l.Gossip, l.Spares = true, spares
		l.ExtraArgs = func(proc.NodeSpec) []string {
			return []string{"--server-stabilization-time", testStabilization.String(),
				"--dead-server-timeout", testDeadTimeout.String(), "--leave-on-terminate"}
		}
	}
}

// startGossipCluster starts the first n nodes of a gossip layout with
// spares more prepared but not started.
func startGossipCluster(t *testing.T, n, spares int) *procCluster {
	t.Helper()
	return startCluster(t, n, gossipLayout(spares))
}

// members asks the leader for the members.
func (c *procCluster) members(limit time.Duration) *pb.MembersResponse {
	c.t.Helper()
	return onLeader(c.t, c, limit, func(ctx context.Context, lc pb.LeaseholdClient) (*pb.MembersResponse, error) {
		return lc.Members(ctx, &pb.MembersRequest{})
	})
}

// voters returns the sorted ids of the voters in m.
func voters(m *pb.MembersResponse) []string {
	var out []string
	for _, mb := range m.GetMembers() {
		if mb.GetSuffrage() == pb.Suffrage_SUFFRAGE_VOTER {
			out = append(out, mb.GetId())
		}
	}
	sort.Strings(out)
	return out
}

// waitVoters polls the leader's members until the voters are exactly want,
// and returns how long that took.
func (c *procCluster) waitVoters(limit time.Duration, want ...string) time.Duration {
	c.t.Helper()
	sort.Strings(want)
	start := time.Now()
	var last []string
	for time.Since(start) < limit {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := proc.OnLeader(ctx, c.Admin(), func(ctx context.Context, lc pb.LeaseholdClient) (*pb.MembersResponse, error) {
			return lc.Members(ctx, &pb.MembersRequest{})
		})
		cancel()
		if err == nil {
			if last = voters(m); slices.Equal(last, want) {
				return time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
	c.t.Fatalf("voters %v not reached within %v; last %v", want, limit, last)
	return 0
}

// removeMember removes id through the leader (leasehold remove).
func (c *procCluster) removeMember(id string, force bool) (*pb.RemoveMemberResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return proc.OnLeader(ctx, c.Admin(), func(ctx context.Context, lc pb.LeaseholdClient) (*pb.RemoveMemberResponse, error) {
		return lc.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: id, Force: force})
	})
}

// sdkLoad runs an SDK limiter against every node of c (spares included)
// until stop, and records every error the application sees: with
// membership changing under it, it must see none.
type sdkLoad struct {
	mu       sync.Mutex
	errs     []error
	admitted int
	done     chan struct{}
}

func startSDKLoad(t *testing.T, c *procCluster, stop <-chan struct{}) *sdkLoad {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, c.Endpoints(), c.sdkTLS("membership"))
	if err != nil {
		t.Fatal(err)
	}
	l := cl.Limiter("membership-load", client.Limit{Rate: 200, Per: time.Second, Burst: 50})
	s := &sdkLoad{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer cl.Close()
		for i := 0; i < 1_000_000; i++ { // bounded; stop ends it long before
			select {
			case <-stop:
				return
			default:
			}
			wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := l.Wait(wctx)
			cancel()
			s.mu.Lock()
			if err != nil {
				s.errs = append(s.errs, err)
			} else {
				s.admitted++
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// TestMembershipLife is the life of a cluster, with real
// processes: start 3 (bootstrap-expect), add a 4th and a 5th that become
// voters, remove two (one by an operator while it runs, one by a graceful
// leave), then kill -9 a voter and start a fresh, empty node that joins in
// its place while the dead one is removed after the dead-server timeout.
// Throughout, a drained bucket stays drained and an SDK client under load
// sees no error.
func TestMembershipLife(t *testing.T) {
	c := startGossipCluster(t, 3, 3)
	nodes := c.Nodes()
	c.waitVoters(60*time.Second, "n1", "n2", "n3")

	drainer := []byte("membership-drain")
	seq := uint64(1)
	if r := acquire(t, c, &pb.AcquireRequest{ClientId: drainer, Seq: seq, Items: item("drained", 10, slowBucket(10))}); !r.Allowed {
		t.Fatalf("draining acquire = %v", r)
	}
	drained := func(when string) {
		t.Helper()
		seq++
		if r := acquire(t, c, &pb.AcquireRequest{ClientId: drainer, Seq: seq, Items: item("drained", 1, slowBucket(10))}); r.Allowed {
			t.Fatalf("%s: acquire of 1 from the drained bucket = %v, want denied", when, r)
		}
	}
	drained("at start")

	stop := make(chan struct{})
	load := startSDKLoad(t, c, stop)

	var toVoter []time.Duration
	// Add n4 and n5: fresh nodes that join and are promoted.
	for _, n := range nodes[3:5] {
		start := time.Now()
		c.start(n)
		want := []string{"n1", "n2", "n3"}
		for _, m := range nodes[3:5] {
			if m.Running() {
				want = append(want, m.ID())
			}
		}
		c.waitVoters(60*time.Second, want...)
		toVoter = append(toVoter, time.Since(start))
		drained("after adding " + n.ID())
	}

	// Remove n5 by an operator while it runs: it learns it and stops
	// taking part, and says so.
	if _, err := c.removeMember("n5", false); err != nil {
		t.Fatal(err)
	}
	c.waitVoters(30*time.Second, "n1", "n2", "n3", "n4")
	waitStatus(t, nodes[4], 30*time.Second, "n5 removed", func(s *pb.StatusResponse) bool {
		return s.GetNodeState() == pb.NodeState_NODE_STATE_REMOVED
	})
	c.stop(nodes[4])
	drained("after removing n5")

	// n4 leaves gracefully (SIGTERM with --leave-on-terminate).
	c.stop(nodes[3])
	c.waitVoters(30*time.Second, "n1", "n2", "n3")
	drained("after n4 left")

	// Replace a dead voter: kill -9 one that is not the leader, start a
	// fresh node (new id, empty data) in its place.
	leader := c.waitLeader(30 * time.Second)
	var victim *proc.Node
	for _, n := range nodes[:3] {
		if n.ID() != leader.ID() {
			victim = n
		}
	}
	killedAt := time.Now()
	c.kill(victim)
	fresh := nodes[5]
	c.start(fresh)
	var survivors []string
	for _, n := range nodes[:3] {
		if n != victim {
			survivors = append(survivors, n.ID())
		}
	}
	var removedAfter, replacedAfter time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		// The fresh node is a voter.
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if slices.Contains(voters(c.members(30*time.Second)), fresh.ID()) {
				mu.Lock()
				replacedAfter = time.Since(killedAt)
				mu.Unlock()
				return
			}
			time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
		}
	})
	wg.Go(func() {
		// The dead voter is gone from the configuration (dead-server timeout).
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			m := c.members(30 * time.Second)
			if !slices.ContainsFunc(m.GetMembers(), func(mb *pb.Member) bool {
				return mb.GetId() == victim.ID() && mb.GetSuffrage() != pb.Suffrage_SUFFRAGE_NONE
			}) {
				mu.Lock()
				removedAfter = time.Since(killedAt)
				mu.Unlock()
				return
			}
			time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
		}
	})
	c.waitVoters(90*time.Second, append(survivors, fresh.ID())...)
	wg.Wait()
	toVoter = append(toVoter, replacedAfter)
	if removedAfter == 0 {
		t.Fatalf("the dead voter %s was not removed", victim.ID())
	}
	if removedAfter < testDeadTimeout {
		t.Errorf("the dead voter was removed %v after the kill, before the dead-server timeout %v", removedAfter, testDeadTimeout)
	}
	drained("after replacing " + victim.ID())

	close(stop)
	<-load.done
	load.mu.Lock()
	defer load.mu.Unlock()
	t.Logf("new node start to voter: %v; killed voter to removed: %v, to a fresh replacement voter: %v; SDK admitted %d",
		durations(toVoter), removedAfter.Round(time.Millisecond), replacedAfter.Round(time.Millisecond), load.admitted)
	if len(load.errs) > 0 {
		t.Errorf("the SDK saw %d errors, first %v", len(load.errs), load.errs[0])
	}
	if load.admitted == 0 {
		t.Errorf("the SDK admitted nothing")
	}
}

func durations(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(time.Millisecond).String())
	}
	return strings.Join(s, " ")
}

// TestSimultaneousRemovalsKeepQuorum: with four voters, one of them dead,
// removing either of two live ones is fine alone, but not both: two removals
// sent at once are serialized on the leader and the second is refused
// (INVALID_ARGUMENT, nothing changed) because it would leave one healthy
// voter of two.
func TestSimultaneousRemovalsKeepQuorum(t *testing.T) {
	c := startCluster(t, 3, gossipLayout(1), func(l *proc.Layout) {
		l.ExtraArgs = func(proc.NodeSpec) []string {
			return []string{"--server-stabilization-time", testStabilization.String()} // dead voters stay
		}
	})
	nodes := c.Nodes()
	c.start(nodes[3])
	c.waitVoters(60*time.Second, "n1", "n2", "n3", "n4")
	leader := c.waitLeader(30 * time.Second)
	var live []*proc.Node
	var dead *proc.Node
	for _, n := range nodes {
		switch {
		case n.ID() == leader.ID():
		case dead == nil:
			dead = n
		default:
			live = append(live, n)
		}
	}
	c.kill(dead)
	// Wait until the leader sees it unhealthy.
	deadline := time.Now().Add(60 * time.Second)
	for {
		m := c.members(30 * time.Second)
		if m.GetFailureTolerance() == 0 && slices.ContainsFunc(m.GetMembers(), func(mb *pb.Member) bool {
			return mb.GetId() == dead.ID() && !mb.GetHealthy()
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader never saw %s fail: %v", dead.ID(), m)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, n := range live {
		wg.Go(func() { _, errs[i] = c.removeMember(n.ID(), false) })
	}
	wg.Wait()
	var refused int
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, transport.ErrInvalid):
			refused++
		default:
			t.Fatalf("removal failed otherwise than refused: %v", err)
		}
	}
	if refused != 1 {
		t.Fatalf("two removals at once: %v; want exactly one refused", errs)
	}
	m := c.members(30 * time.Second)
	if v := voters(m); len(v) != 3 {
		t.Fatalf("voters after the removals: %v, want 3 (the leader, the dead one and one live one)", v)
	}
	// Removing the dead one is fine: two healthy voters of two are left.
	if _, err := c.removeMember(dead.ID(), false); err != nil {
		t.Fatalf("removal of the dead voter: %v", err)
	}
	if v := voters(c.members(30 * time.Second)); len(v) != 2 || slices.Contains(v, dead.ID()) {
		t.Fatalf("voters at the end: %v", v)
	}
}

// TestRecoverFromLostQuorum is the README's outage recovery: two of three
// voters are gone for good; the survivor cannot elect. The operator stops
// it, writes a peers.json naming only it into its data directory, and
// starts it again: it leads a one-node cluster with every acknowledged
// write (the drained bucket is still drained), and fresh nodes can join it
// to grow back.
func TestRecoverFromLostQuorum(t *testing.T) {
	c := startGossipCluster(t, 3, 2)
	nodes := c.Nodes()
	c.waitVoters(60*time.Second, "n1", "n2", "n3")
	drainer := []byte("recover-drain")
	if r := acquire(t, c, &pb.AcquireRequest{ClientId: drainer, Seq: 1, Items: item("drained", 10, slowBucket(10))}); !r.Allowed {
		t.Fatalf("draining acquire = %v", r)
	}
	survivor := nodes[0]
	c.kill(nodes[1])
	c.kill(nodes[2])
	c.stop(survivor)

	// peers.json: the servers the cluster is to have, as Consul's.
	peers := fmt.Sprintf(`[{"id": %q, "address": %q, "non_voter": false}]`, survivor.ID(), survivor.RaftAddr())
	if err := os.WriteFile(filepath.Join(survivor.Spec().Data, "peers.json"), []byte(peers), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(survivor)
	c.waitVoters(60*time.Second, survivor.ID())
	if _, err := os.Stat(filepath.Join(survivor.Spec().Data, "peers.json.recovered")); err != nil {
		t.Errorf("peers.json was not renamed once applied: %v", err)
	}
	if r := acquire(t, c, &pb.AcquireRequest{ClientId: drainer, Seq: 2, Items: item("drained", 1, slowBucket(10))}); r.Allowed {
		t.Fatalf("after recovery, acquire of 1 from the drained bucket = %v, want denied", r)
	}
	// Grow back with fresh nodes.
	c.start(nodes[3])
	c.start(nodes[4])
	c.waitVoters(60*time.Second, survivor.ID(), nodes[3].ID(), nodes[4].ID())
}
