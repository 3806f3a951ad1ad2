package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// spansInLog returns the Acquires in n's log that carry a Span: the entries
// a replica that predates the field stops on.
func spansInLog(t *testing.T, n *Node) int {
	t.Helper()
	return acquiresInLog(t, n, func(a *fsm.Acquire) bool { return a.Span != 0 })
}

// acquiresInLog returns the Acquires in n's log, batched or not, for which
// match is true.
func acquiresInLog(t *testing.T, n *Node, match func(*fsm.Acquire) bool) int {
	t.Helper()
	first, err := n.logs.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := n.logs.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	matched := 0
	var count func(c fsm.Command)
	count = func(c fsm.Command) {
		switch c := c.(type) {
		case *fsm.Acquire:
			if match(c) {
				matched++
			}
		case *fsm.Batch:
			for _, c := range c.Commands {
				count(c)
			}
		}
	}
	for i := max(first, 1); i <= last; i++ {
		var l raft.Log
		if err := n.logs.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		_, c, err := fsm.Decode(l.Data)
		if err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		count(c)
	}
	return matched
}

// gossipLevel makes n gossip level as its command level, as a build at that
// level would (0: one that predates levels, the field left out).
func gossipLevel(t *testing.T, n *Node, level int) {
	t.Helper()
	if err := n.mem.g.setMeta(func(mm *memberMeta) { mm.Level = level }, time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestSpanNotSentUntilEveryMemberKnowsIt: a sliding window's central
// Acquire carries a span (the SDK sends one on every such decision), and a
// replica whose build predates Acquire.Span stops on an entry that carries
// it (fsm: unknown fields are corruption), so in a rolling upgrade a new
// leader, or a client upgraded before the nodes, would stop every old
// follower. The leader leaves the span out (the answer's TTL is 0: an
// instant decision, as the SDK admits it against an old cluster) until
// every server of the configuration gossips a command level that knows
// it, and sends it from then on.
func TestSpanNotSentUntilEveryMemberKnowsIt(t *testing.T) {
	sc := newSpanCluster(t)
	// One member gossips no level, as a build that predates them does.
	sc.setLevel(0)
	if got := sc.acquire(1).GetTtlNs(); got != 0 {
		t.Errorf("with %s at level 0: ttl %v; want 0 (no span sent)", sc.old.ID(), time.Duration(got))
	}
	if n := spansInLog(t, sc.leader); n != 0 {
		t.Errorf("with %s at level 0: %d Acquires in the log carry a span; want none", sc.old.ID(), n)
	}

	// The member is upgraded: the next decision is counted over its span.
	sc.setLevel(commandLevel)
	if got := time.Duration(sc.acquire(2).GetTtlNs()); got != spanAsked {
		t.Errorf("with every member at this build's level: ttl %v; want the span, %v", got, spanAsked)
	}
	if n := spansInLog(t, sc.leader); n != 1 {
		t.Errorf("with every member at this build's level: %d Acquires in the log carry a span; want 1", n)
	}
	for _, n := range sc.nodes {
		if n.Removed() {
			t.Errorf("%s stopped", n.ID())
		}
	}
}

// TestRetryAcrossTheLevelRiseIsNotRefusedAsSeqReused: a request applied
// without its span (the level was 0, or its leader predated the field)
// and retried with the same seq once the level has risen is sent with its
// span: another body under the same seq, which fsm refuses as a reused
// seq (InvalidArgument to the SDK). The leader asks again without the
// span, and the retry gets the remembered answer.
func TestRetryAcrossTheLevelRiseIsNotRefusedAsSeqReused(t *testing.T) {
	sc := newSpanCluster(t)
	sc.setLevel(0)
	first := sc.acquire(1)
	sc.setLevel(commandLevel)
	retry := sc.acquire(1)
	if retry.GetTtlNs() != 0 || retry.GetDecided() || retry.GetLogTimeNs() != first.GetLogTimeNs() {
		t.Errorf("retry across the level rise: %v; want the first answer %v, remembered", retry, first)
	}
	// A seq reused for another request is still refused.
	_, err := sc.leader.Acquire(sc.ctx, &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1,
		Items: []*pb.AcquireItem{{Key: "w", Count: 2, Want: 2}}, SpanNs: int64(spanAsked)})
	wantInvalid(t, "seq 1 reused for another acquire", err, "seq")
}

// TestSpanBucketsNotSentUntilEveryMemberKnowsIt: a token bucket's central
// Acquire carries a span too (the SDK asks for the time it may spend the
// grant in), and from command level 2 the leader marks it SpanBuckets, so
// that the bucket answers its MaxLease; a level-1 replica stops on that
// field. With a member at level 1 the leader sends the span alone (the
// answer's TTL is 0: the SDK admits it as before), and SpanBuckets once
// every member gossips level 2. A retry across that rise, its first
// attempt applied without SpanBuckets, gets its remembered answer (TTL 0):
// the field is the leader's, not the request's, and fsm leaves it out of
// the body's digest, so the retry is no reused seq.
func TestSpanBucketsNotSentUntilEveryMemberKnowsIt(t *testing.T) {
	const maxLease = spanAsked / 2 // the span answered is cut to it
	sc := newSpanCluster(t)
	if _, err := sc.leader.SetLimit(sc.ctx, &pb.SetLimitRequest{Key: "tb", Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET,
		Limit: 1000, PeriodNs: int64(time.Second), Burst: 1000, MaxLeaseNs: int64(maxLease)}}); err != nil {
		t.Fatal(err)
	}
	marked := func() int { return acquiresInLog(t, sc.leader, func(c *fsm.Acquire) bool { return c.SpanBuckets }) }
	sc.setLevel(levelSpan)
	if got := sc.acquireKey("tb", 1).GetTtlNs(); got != 0 {
		t.Errorf("with %s at level 1: ttl %v; want 0 (no SpanBuckets sent)", sc.old.ID(), time.Duration(got))
	}
	if n := marked(); n != 0 {
		t.Errorf("with %s at level 1: %d Acquires in the log carry SpanBuckets; want none", sc.old.ID(), n)
	}
	first := sc.acquireKey("tb", 2)

	sc.setLevel(commandLevel)
	if got := time.Duration(sc.acquireKey("tb", 3).GetTtlNs()); got != maxLease {
		t.Errorf("with every member at level 2: ttl %v; want the key's max lease, %v", got, maxLease)
	}
	if n := marked(); n != 1 {
		t.Errorf("with every member at level 2: %d Acquires in the log carry SpanBuckets; want 1", n)
	}
	retry := sc.acquireKey("tb", 2)
	if retry.GetTtlNs() != 0 || retry.GetDecided() || retry.GetLogTimeNs() != first.GetLogTimeNs() {
		t.Errorf("retry across the level rise: %v; want the first answer %v, remembered", retry, first)
	}
	for _, n := range sc.nodes {
		if n.Removed() {
			t.Errorf("%s stopped", n.ID())
		}
	}
}

// TestGenuineSeqReuseCostsOneEntry: the leader answered a seq reused for
// another request by proposing it again without its span, in case an
// earlier attempt had been applied without one, so a client that really
// reuses seqs cost two Raft entries per request. Apply tells such a retry
// from a reuse itself (fsm: a spanned Acquire matches a result remembered
// for its spanless body), and the reuse costs the one entry that refuses it.
func TestGenuineSeqReuseCostsOneEntry(t *testing.T) {
	sc := newSpanCluster(t)
	sc.acquire(1)
	seq1 := func(a *fsm.Acquire) bool { return a.ClientID == "c" && a.Seq == 1 }
	before := acquiresInLog(t, sc.leader, seq1)
	_, err := sc.leader.Acquire(sc.ctx, &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1,
		Items: []*pb.AcquireItem{{Key: "w", Count: 2, Want: 2}}, SpanNs: int64(spanAsked)})
	wantInvalid(t, "seq 1 reused for another acquire", err, "seq")
	if n := acquiresInLog(t, sc.leader, seq1) - before; n != 1 {
		t.Errorf("a seq reused for another request put %d Acquires in the log; want 1", n)
	}
}

// spanAsked is the span the tests' Acquires ask.
const spanAsked = 200 * time.Millisecond

// spanCluster is a gossip cluster of three with a sliding-window key "w",
// and a follower, old, whose gossiped command level the test sets.
type spanCluster struct {
	t      *testing.T
	ctx    context.Context
	nodes  []*Node
	leader *Node
	old    *Node
}

func newSpanCluster(t *testing.T) *spanCluster {
	g, nodes := bootstrapThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	t.Cleanup(cancel)
	sc := &spanCluster{t: t, ctx: ctx, nodes: nodes, leader: g.leader()}
	for _, n := range nodes {
		if n != sc.leader {
			sc.old = n
			break
		}
	}
	if _, err := sc.leader.SetLimit(ctx, &pb.SetLimitRequest{Key: "w", Limit: &pb.Limit{Algorithm: pb.Algorithm_SLIDING_WINDOW,
		Limit: 1000, PeriodNs: int64(10 * time.Second), MaxLeaseNs: int64(time.Second)}}); err != nil {
		t.Fatal(err)
	}
	// Every member at this build's level: the leader sends spans.
	waitFor(t, opWait, "the leader at this build's level", func() bool { return sc.leader.sendLevel.Load() == commandLevel })
	return sc
}

// setLevel makes old gossip level, and waits until the leader sends at it.
func (sc *spanCluster) setLevel(level int) {
	sc.t.Helper()
	gossipLevel(sc.t, sc.old, level)
	waitFor(sc.t, opWait, fmt.Sprintf("the leader to see %s at level %d", sc.old.ID(), level), func() bool {
		mb, ok := sc.leader.mem.g.member(sc.old.ID())
		return ok && mb.metaOK && mb.meta.Level == level && mb.state == memberlist.StateAlive
	})
	waitFor(sc.t, opWait, fmt.Sprintf("the leader at level %d", level), func() bool {
		return sc.leader.sendLevel.Load() == int32(level)
	})
}

// acquire takes one token of "w" centrally, asking spanAsked, as client c
// with seq, and checks it was granted.
func (sc *spanCluster) acquire(seq uint64) *pb.AcquireResponse {
	sc.t.Helper()
	return sc.acquireKey("w", seq)
}

// acquireKey is acquire on key.
func (sc *spanCluster) acquireKey(key string, seq uint64) *pb.AcquireResponse {
	sc.t.Helper()
	resp, err := sc.leader.Acquire(sc.ctx, &pb.AcquireRequest{ClientId: []byte("c"), Seq: seq,
		Items: []*pb.AcquireItem{{Key: key, Count: 1, Want: 1}}, SpanNs: int64(spanAsked), SpanBuckets: true})
	if err != nil {
		sc.t.Fatalf("acquire %d: %v", seq, err)
	}
	if !resp.GetAllowed() || resp.GetItems()[0].GetGranted() != 1 || resp.GetLeaseId() != 0 {
		sc.t.Fatalf("acquire %d: %v; want a central grant of 1", seq, resp)
	}
	return resp
}

// TestClusterLevel: the least level gossiped by the servers of the
// configurations, self at commandLevel; a server unknown to gossip, or
// whose meta did not decode, counts as 0; no configuration gives 0.
func TestClusterLevel(t *testing.T) {
	cfg := func(ids ...string) raft.Configuration {
		var c raft.Configuration
		for _, id := range ids {
			c.Servers = append(c.Servers, raft.Server{ID: raft.ServerID(id)})
		}
		return c
	}
	at := func(id string, level int) memberInfo {
		return memberInfo{id: id, metaOK: true, meta: memberMeta{Level: level}}
	}
	for _, tc := range []struct {
		name    string
		members []memberInfo
		cfgs    []raft.Configuration
		want    int
	}{
		{"all at 1", []memberInfo{at("a", 1), at("b", 1)}, []raft.Configuration{cfg("self", "a", "b")}, 1},
		{"self alone", nil, []raft.Configuration{cfg("self")}, commandLevel},
		{"one at 0", []memberInfo{at("a", 1), at("b", 0)}, []raft.Configuration{cfg("self", "a", "b")}, 0},
		{"one unknown", []memberInfo{at("a", 1)}, []raft.Configuration{cfg("self", "a", "b")}, 0},
		{"meta not decoded", []memberInfo{at("a", 1), {id: "b", meta: memberMeta{Level: 1}}},
			[]raft.Configuration{cfg("self", "a", "b")}, 0},
		{"a newer member counts at ours", []memberInfo{at("a", 7)}, []raft.Configuration{cfg("self", "a")}, commandLevel},
		{"gossip beyond the configuration ignored", []memberInfo{at("a", 1), at("x", 0)},
			[]raft.Configuration{cfg("self", "a")}, 1},
		{"a server only in the latest configuration", []memberInfo{at("a", 1), at("new", 0)},
			[]raft.Configuration{cfg("self", "a"), cfg("self", "a", "new")}, 0},
		{"no configuration", []memberInfo{at("a", 1)}, []raft.Configuration{{}, {}}, 0},
	} {
		if got := clusterLevel("self", tc.members, tc.cfgs...); got != tc.want {
			t.Errorf("%s: %d; want %d", tc.name, got, tc.want)
		}
	}
}

// TestSpanOfAnOldClientWritesNoSpanBuckets: the leader marked every
// spanned Acquire SpanBuckets from level 2, and a static cluster's level is
// its own build's. Clients of the previous release send span_ns on their
// central window decisions, so the first node of a static cluster upgraded
// to lead wrote fsm field 10 into the log, and every replica not yet
// upgraded stopped on it. Only a request that asks (span_buckets) is
// marked, and only from level 2.
func TestSpanOfAnOldClientWritesNoSpanBuckets(t *testing.T) {
	window := &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1, SpanNs: int64(spanAsked),
		Items: []*pb.AcquireItem{{Key: "w", Count: 1}}}
	bucket := &pb.AcquireRequest{ClientId: []byte("c"), Seq: 2, SpanNs: int64(spanAsked), SpanBuckets: true,
		Items: []*pb.AcquireItem{{Key: "tb", Count: 1}}}
	for _, tc := range []struct {
		name  string
		req   *pb.AcquireRequest
		level int
		want  bool
	}{
		{"old client's window span at this build's level", window, commandLevel, false},
		{"span_buckets asked at this build's level", bucket, commandLevel, true},
		{"span_buckets asked below levelSpanBuckets", bucket, levelSpanBuckets - 1, false},
		{"span_buckets asked with no span", &pb.AcquireRequest{ClientId: []byte("c"), Seq: 3, SpanBuckets: true,
			Items: []*pb.AcquireItem{{Key: "tb", Count: 1}}}, commandLevel, false},
	} {
		c := acquireCommandAt(tc.req, tc.level)
		if c.SpanBuckets != tc.want {
			t.Errorf("%s: SpanBuckets %v, want %v", tc.name, c.SpanBuckets, tc.want)
		}
	}
}

// TestDeleteLimitsRefusedBelowLevel3: a replica of a build that predates
// DeleteLimits stops on it (fsm: an unknown command type is corruption),
// so a leader whose cluster has one refuses the request, naming the server
// to upgrade, with an error a client does not take for NotLeader, and
// proposes nothing; once every server gossips level 3 it deletes.
func TestDeleteLimitsRefusedBelowLevel3(t *testing.T) {
	sc := newSpanCluster(t)
	l := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Hour)}
	for i := range 3 {
		if _, err := sc.leader.Acquire(sc.ctx, &pb.AcquireRequest{ClientId: []byte("bot"), Seq: uint64(i + 1), Items: []*pb.AcquireItem{
			{Key: fmt.Sprintf("bot/%d", i), Count: 10, Limit: l}}}); err != nil {
			t.Fatal(err)
		}
	}
	req := &pb.DeleteLimitsRequest{Prefix: "bot/", UnpinnedOnly: true}

	sc.setLevel(levelDeleteLimits - 1)
	_, err := sc.leader.DeleteLimits(sc.ctx, req)
	got := transport.FromStatus(transport.ToStatus(err))
	if !errors.Is(got, transport.ErrUpgradeNeeded) || errors.Is(got, transport.ErrNotLeader) ||
		!strings.Contains(got.Error(), "upgrade these servers") || !strings.Contains(got.Error(), sc.old.ID()) {
		t.Fatalf("DeleteLimits with %s at level %d: %v; want ErrUpgradeNeeded naming it", sc.old.ID(), levelDeleteLimits-1, got)
	}
	t.Log(got)
	if code := status.Code(transport.ToStatus(err)); code != codes.FailedPrecondition {
		t.Errorf("on the wire: %v; want FAILED_PRECONDITION", code)
	}
	var keys int
	sc.leader.fsm.read(func(m *fsm.Machine) { keys = m.Stats().Keys })
	if keys != 4 { // and w
		t.Errorf("after the refusal the leader holds %d keys; want w and the 3 bot/ keys", keys)
	}

	sc.setLevel(commandLevel)
	resp, err := sc.leader.DeleteLimits(sc.ctx, req)
	if err != nil || resp.GetDeleted() != 3 || resp.GetMore() || resp.GetLastKey() != "bot/2" {
		t.Fatalf("DeleteLimits with every server at level %d: %v, %v; want 3 deleted up to bot/2", commandLevel, resp, err)
	}
	for _, n := range sc.nodes {
		if n.Removed() {
			t.Errorf("%s stopped", n.ID())
		}
	}
}
