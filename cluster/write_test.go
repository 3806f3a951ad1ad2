package cluster

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// slow is a token bucket of n tokens per 10,000 hours, burst n: for n up to
// a few thousand, a test can take exactly n tokens.
func slow(n int64) *pb.Limit {
	return &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: n, PeriodNs: int64(10_000 * time.Hour)}
}

// acquireOn sends req to whichever of nodes is the ready leader until it gets
// an answer that is not retryable, as a client would (same client id and
// seq on every try). It counts the retryable errors it saw in retries. Safe
// to call from any goroutine; it does not stop the test.
func acquireOn(nodes []*Node, req *pb.AcquireRequest, retries *atomic.Int64) (*pb.AcquireResponse, error) {
	deadline := time.Now().Add(opWait)
	for {
		leader := readyLeader(nodes)
		if leader == nil {
			return nil, errors.New("no ready leader")
		}
		ctx, cancel := context.WithTimeout(context.Background(), opWait)
		resp, err := leader.Acquire(ctx, req)
		cancel()
		if err == nil || !retryable(err) || time.Now().After(deadline) {
			return resp, err
		}
		retries.Add(1)
	}
}

// TestConcurrentAcquiresShareEntries: many goroutines acquire one token each
// from one key at once. Their commands share Raft entries, and each gets its
// own result: exactly the bucket's tokens are granted, every grant leaves a
// different remainder (no result is handed to two requests, no token is
// granted twice), and later grants carry later or equal log times.
func TestConcurrentAcquiresShareEntries(t *testing.T) {
	c := newTestCluster(t, 3)
	const (
		limit   = 300
		workers = 40
		each    = 15 // workers*each > limit: some are denied
	)
	c.setLimit("k", slow(limit))
	nodes := slices.Clone(c.nodes)
	leader := c.leader()
	before := leader.raft.AppliedIndex()

	type grant struct{ remaining, logTime int64 }
	var (
		mu      sync.Mutex
		grants  []grant
		denied  int
		retries atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range each {
				resp, err := acquireOn(nodes, take(fmt.Sprintf("w%d", w), uint64(s+1), "k", 1, 0), &retries)
				if err != nil {
					t.Errorf("worker %d seq %d: %v", w, s+1, err)
					return
				}
				mu.Lock()
				if resp.GetAllowed() {
					grants = append(grants, grant{resp.GetItems()[0].GetRemaining(), resp.GetLogTimeNs()})
				} else {
					denied++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	if len(grants) != limit || denied != workers*each-limit {
		t.Fatalf("%d granted, %d denied; want %d and %d", len(grants), denied, limit, workers*each-limit)
	}
	slices.SortFunc(grants, func(a, b grant) int { return int(b.remaining - a.remaining) })
	for i, g := range grants {
		if g.remaining != int64(limit-1-i) {
			t.Fatalf("grant %d left %d tokens; want %d: remainders must be %d down to 0, each once",
				i, g.remaining, limit-1-i, limit-1)
		}
		if i > 0 && g.logTime < grants[i-1].logTime {
			t.Errorf("grant leaving %d has log time %d, before %d of the grant leaving %d",
				g.remaining, g.logTime, grants[i-1].logTime, grants[i-1].remaining)
		}
	}
	if retries.Load() == 0 && leader.IsLeader() {
		// Without a leader change every command went through this leader's
		// log: fewer entries than commands means they shared entries.
		if entries := leader.raft.AppliedIndex() - before; entries >= workers*each {
			t.Errorf("%d commands took %d entries; want fewer (batched)", workers*each, entries)
		} else {
			t.Logf("%d commands in %d entries", workers*each, entries)
		}
	}
}

// TestDedupAcrossEntries: the same (client id, seq) sent many times at once,
// as retries racing each other, lands in the same entry or in later ones;
// every copy returns the first result, and the tokens are taken once.
func TestDedupAcrossEntries(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("k", slow(100))
	c.setLimit("other", slow(1_000_000))
	nodes := slices.Clone(c.nodes)

	const copies = 32
	var (
		wg      sync.WaitGroup
		retries atomic.Int64
		resps   = make([]*pb.AcquireResponse, copies)
	)
	for i := range copies {
		wg.Add(2)
		go func() {
			defer wg.Done()
			resp, err := acquireOn(nodes, take("dup", 1, "k", 3, 0), &retries)
			if err != nil {
				t.Errorf("copy %d: %v", i, err)
			}
			resps[i] = resp
		}()
		go func() { // traffic from other clients in the same entries
			defer wg.Done()
			if _, err := acquireOn(nodes, take(fmt.Sprintf("filler%d", i), 1, "other", 1, 0), &retries); err != nil {
				t.Errorf("filler %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	first := resps[0]
	if !first.GetAllowed() || first.GetItems()[0].GetRemaining() != 97 {
		t.Fatalf("first copy = %v; want allowed, 97 left", first)
	}
	for i, r := range append(resps, c.acquire(take("dup", 1, "k", 3, 0))) {
		if r.GetLogTimeNs() != first.GetLogTimeNs() || r.GetItems()[0].GetRemaining() != 97 || !r.GetAllowed() {
			t.Errorf("copy %d = %v; want the first result %v", i, r, first)
		}
	}
	if r := c.acquire(take("check", 1, "k", 97, 0)); !r.GetAllowed() {
		t.Errorf("acquire of the other 97 = %v; want allowed (the copies took 3 once)", r)
	}
	if r := c.acquire(take("check", 2, "k", 1, 0)); r.GetAllowed() {
		t.Errorf("acquire of a 101st token = %v; want denied", r)
	}
}

// TestDedupInsideOneEntry: a seq repeated inside one batch entry applies
// once; the repeat returns the first result.
func TestDedupInsideOneEntry(t *testing.T) {
	f := newMachineFSM(newActivity(nil), nil)
	limit := fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 10, Period: time.Hour}
	first := &fsm.Acquire{ClientID: "c", Seq: 1, Items: []fsm.Item{{Key: "k", Count: 4, Limit: &limit}}}
	again := *first
	other := &fsm.Acquire{ClientID: "d", Seq: 1, Items: []fsm.Item{{Key: "k", Count: 6}}}
	entry := encodeEntry(int64(time.Second), []fsm.Command{first, &again, other, &again})
	rs := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: entry}).([]fsm.Result)
	if len(rs) != 4 {
		t.Fatalf("%d results; want 4", len(rs))
	}
	if rs[0].Status != fsm.StatusOK || rs[0].Items[0].Remaining != 6 {
		t.Fatalf("first = %+v; want granted, 6 left", rs[0])
	}
	for _, i := range []int{1, 3} {
		if rs[i].Status != rs[0].Status || rs[i].Time != rs[0].Time || rs[i].Items[0] != rs[0].Items[0] {
			t.Errorf("repeat at %d = %+v; want the first result %+v", i, rs[i], rs[0])
		}
	}
	if rs[2].Status != fsm.StatusOK || rs[2].Items[0].Remaining != 0 {
		t.Errorf("other client's 6 = %+v; want granted, 0 left (4 were taken once)", rs[2])
	}
}

// TestBatchesAcrossLeaderChange: clients keep writing while leadership is
// handed over and then the new leader is killed. Requests in flight get
// errors that say to retry (unknown outcome or not leader), never a wrong
// answer; retrying each with the same seq takes every token exactly once.
func TestBatchesAcrossLeaderChange(t *testing.T) {
	c := newTestCluster(t, 3)
	const (
		limit   = 2000
		workers = 16
		each    = 40
	)
	c.setLimit("k", slow(limit))
	nodes := slices.Clone(c.nodes)

	var (
		done     atomic.Int64
		retries  atomic.Int64
		mu       sync.Mutex
		remains  = map[int64]string{}
		wg       sync.WaitGroup
		progress = func(n int64) {
			waitFor(t, opWait, fmt.Sprintf("%d acquires", n), func() bool { return done.Load() >= n })
		}
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range each {
				id := fmt.Sprintf("w%d/%d", w, s+1)
				resp, err := acquireOn(nodes, take(fmt.Sprintf("w%d", w), uint64(s+1), "k", 1, 0), &retries)
				if err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				left := resp.GetItems()[0].GetRemaining()
				mu.Lock()
				if prev, dup := remains[left]; dup || !resp.GetAllowed() {
					t.Errorf("%s = %v; want allowed, a remainder no other acquire got (%s got it)", id, resp, prev)
				}
				remains[left] = id
				mu.Unlock()
				done.Add(1)
			}
		}()
	}

	progress(workers * each / 4)
	old := c.leader()
	if err := old.raft.LeadershipTransfer().Error(); err != nil {
		t.Logf("leadership transfer: %v", err) // the kill below still changes leaders
	}
	progress(workers * each / 2)
	c.stop(c.index(c.leader()), true)
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d retries after errors", retries.Load())
	if retries.Load() == 0 {
		t.Error("no request saw an error across two leader changes; the test did not test them")
	}
	rest := int64(limit - workers*each)
	if r := c.acquire(take("check", 1, "k", rest, 0)); !r.GetAllowed() {
		t.Errorf("acquire of the other %d = %v; want allowed (each seq took one token, once)", rest, r)
	}
	if r := c.acquire(take("check", 2, "k", 1, 0)); r.GetAllowed() {
		t.Errorf("acquire past the limit = %v; want denied", r)
	}
}

// quorumLossTimings make a leader that loses its followers stay leader long
// enough for a test to put entries in flight that cannot commit.
func quorumLossTimings(c *Config) {
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 3*time.Second, 3*time.Second, 3*time.Second
}

// isolate stops every follower of the leader, so nothing more can commit,
// and returns the leader.
func isolate(c *testCluster) *Node {
	leader := c.leader()
	for _, f := range c.followers(leader) {
		c.stop(c.index(f), true)
	}
	return leader
}

// waitAppended waits until the isolated leader has appended an entry past
// index before to its log, or has stepped down, and reports whether it
// appended one. An appended entry is in Raft's in-flight list: when the
// leader steps down or shuts down, its requests learn an unknown outcome. A
// batch handed to Raft but not yet appended fails with not leader instead,
// and a machine slow enough can let the leader step down (LeaderLeaseTimeout
// after it lost its followers) before it appends anything.
func waitAppended(t *testing.T, leader *Node, before uint64) bool {
	t.Helper()
	waitFor(t, opWait, "an entry in the leader's log", func() bool {
		return leader.raft.LastIndex() > before || !leader.IsLeader()
	})
	if leader.raft.LastIndex() > before {
		return true
	}
	t.Log("the leader stepped down before it appended a request")
	return false
}

// acquireMany starts n acquires of one token of key k on node and returns
// the channel their errors arrive on.
func acquireMany(n *Node, prefix string, count int) <-chan error {
	errs := make(chan error, count)
	for i := range count {
		go func() {
			_, err := n.Acquire(context.Background(), take(fmt.Sprintf("%s%d", prefix, i), 1, "k", 1, 0))
			errs <- err
		}()
	}
	return errs
}

// TestInFlightWritesOnLeadershipLoss: entries that cannot commit fail when
// the leader steps down: every request in them learns an unknown outcome,
// the queued ones that their leader is gone. A caller whose context ends
// stops alone.
func TestInFlightWritesOnLeadershipLoss(t *testing.T) {
	c := newTestCluster(t, 3, quorumLossTimings)
	c.setLimit("k", slow(1_000_000))
	leader := isolate(c)

	before := leader.raft.LastIndex()
	errs := acquireMany(leader, "c", 32)
	ctx, cancel := context.WithCancel(context.Background())
	canceled := make(chan error, 1)
	go func() {
		_, err := leader.Acquire(ctx, take("cancel", 1, "k", 1, 0))
		canceled <- err
	}()
	appended := waitAppended(t, leader, before)
	cancel()
	if err := <-canceled; !errors.Is(err, context.Canceled) {
		t.Errorf("acquire whose context was canceled: err = %v; want context.Canceled", err)
	}
	unknown := 0
	for range cap(errs) {
		select {
		case err := <-errs:
			switch {
			case errors.Is(err, transport.ErrUnknownOutcome):
				unknown++
			case errors.Is(err, transport.ErrNotLeader):
			default:
				t.Errorf("acquire on a leader losing its quorum: err = %v; want unknown outcome or not leader", err)
			}
		case <-time.After(opWait):
			t.Fatal("acquires still waiting long after the leader lost its quorum")
		}
	}
	if unknown == 0 && appended {
		t.Error("no acquire learned an unknown outcome; the ones in the leader's log must")
	}
	if leader.IsLeader() {
		t.Error("the isolated leader is still leader")
	}
}

// TestCloseFailsWaitingWrites: Close fails every request queued or in flight
// at once, with errors that say to retry, and its batcher is gone when Close
// returns.
func TestCloseFailsWaitingWrites(t *testing.T) {
	c := newTestCluster(t, 3, quorumLossTimings)
	c.setLimit("k", slow(1_000_000))
	leader := isolate(c)

	before := leader.raft.LastIndex()
	errs := acquireMany(leader, "c", 64)
	appended := waitAppended(t, leader, before)
	if appended {
		select {
		case err := <-errs:
			t.Fatalf("an acquire returned before Close: %v", err)
		default:
		}
	}
	c.stop(c.index(leader), true)
	unknown := 0
	for range cap(errs) {
		select {
		case err := <-errs:
			if !retryable(err) {
				t.Errorf("acquire across Close: err = %v; want unknown outcome or not leader", err)
			}
			if errors.Is(err, transport.ErrUnknownOutcome) {
				unknown++
			}
		case <-time.After(opWait):
			t.Fatal("acquires still waiting after Close returned")
		}
	}
	if unknown == 0 && appended {
		t.Error("no acquire learned an unknown outcome; the ones in the leader's log must")
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "(*batcher).run") {
		t.Errorf("a batcher still runs after its node closed:\n%s", stacks)
	}
}
