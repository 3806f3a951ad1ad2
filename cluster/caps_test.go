package cluster

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/testlog"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fullErr fails the test unless err is a *transport.FullError for resource
// whose reason says want, and returns it.
func fullErr(t *testing.T, err error, resource, want string) *transport.FullError {
	t.Helper()
	var fe *transport.FullError
	if !errors.As(err, &fe) || !errors.Is(err, transport.ErrFull) || fe.Resource != resource {
		t.Fatalf("got %v, want a *transport.FullError for %s", err, resource)
	}
	if !strings.Contains(fe.Reason, want) {
		t.Fatalf("reason %q does not say %q", fe.Reason, want)
	}
	return fe
}

// withLimit is take with key's limit sent inline, as a client that creates
// its keys does.
func withLimit(client string, seq uint64, key string, l *pb.Limit) *pb.AcquireRequest {
	req := take(client, seq, key, 1, 0)
	req.Items[0].Limit = l
	return req
}

// TestMaxKeysRefusesNewKeys is the regression test of a client certificate
// growing every replica without bound: new keys with a long period (never
// idle, so never swept) were all applied.
func TestMaxKeysRefusesNewKeys(t *testing.T) {
	var regs perNodeRegistries
	c := newTestCluster(t, 3, regs.option, func(c *Config) { c.MaxKeys = 2 })
	century := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(100 * 365 * 24 * time.Hour)}
	c.acquire(withLimit("c1", 1, "a", century))
	c.acquire(withLimit("c1", 2, "b", century))

	leader := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	_, err := leader.Acquire(ctx, withLimit("c1", 3, "new", century))
	fullErr(t, err, transport.FullKeys, `the cluster holds 2 keys, at its cap (--max-keys 2); key "new" is new`)
	// An acquire naming a held key and a new one adds one: refused.
	two := withLimit("c1", 4, "a", century)
	two.Items = append(two.Items, &pb.AcquireItem{Key: "new2", Count: 1, Limit: century})
	_, err = leader.Acquire(ctx, two)
	fullErr(t, err, transport.FullKeys, `key "new2" is new`)
	_, err = leader.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c1"), Seq: 5,
		Items: []*pb.ChargeItem{{Key: "new", Tokens: 1, Limit: century}}})
	fullErr(t, err, transport.FullKeys, `key "new" is new`)
	_, err = leader.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c1"), Seq: 6,
		Items: []*pb.RestrictItem{{Key: "new", BlockedForNs: int64(time.Second), Limit: century}}})
	fullErr(t, err, transport.FullKeys, `key "new" is new`)
	// A key with no limit, sent without one, could add nothing: it gets
	// NoLimit as below the cap, not a full cluster, which a fail-open
	// client would admit. Regression: at the cap it got ErrFull.
	if _, err := leader.Acquire(ctx, take("c1", 7, "typo", 1, 0)); !errors.Is(err, transport.ErrNoLimit) {
		t.Errorf("acquire of a key with no limit at the cap: got %v, want ErrNoLimit", err)
	}
	// A follower sends the client to the leader, full or not.
	for _, f := range c.followers(leader) {
		if _, err := f.Acquire(ctx, withLimit("c1", 8, "new", century)); !errors.Is(err, transport.ErrNotLeader) {
			t.Errorf("follower %s: got %v, want ErrNotLeader", f.cfg.ID, err)
		}
	}
	if got := leader.stats().Keys; got != 2 {
		t.Fatalf("the leader holds %d keys after the refusals, want 2", got)
	}
	if got := testutil.ToFloat64(leader.metrics.refusedSeries[capKeys]); got != 4 {
		t.Errorf("leasehold_requests_refused_total{reason=max_keys} = %v, want 4", got)
	}

	// Held keys are served, and an operator's SetLimit is not capped.
	if r := c.acquire(withLimit("c1", 9, "a", century)); !r.Allowed {
		t.Errorf("acquire of a held key at the cap was denied")
	}
	c.setLimit("pinned", hourly(5))
	if got := c.leader().stats().Keys; got != 3 {
		t.Errorf("%d keys after SetLimit of a new key at the cap, want 3", got)
	}
}

// TestMaxKeysIdleKeyFreesRoom checks that a key the sweep forgets (its
// bucket refilled) makes room for a new one.
func TestMaxKeysIdleKeyFreesRoom(t *testing.T) {
	c := newTestCluster(t, 1, func(c *Config) { c.MaxKeys = 1 })
	quick := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 100, PeriodNs: int64(100 * time.Millisecond)}
	c.acquire(withLimit("c1", 1, "short", quick))
	seq := uint64(2)
	admitted := poll(opWait, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), opWait)
		defer cancel()
		n := c.leader()
		seq++
		_, err := n.Acquire(ctx, withLimit("c1", seq, "next", quick))
		if err == nil {
			return true
		}
		if !errors.Is(err, transport.ErrFull) {
			t.Fatalf("acquire of a new key: %v", err)
		}
		// Nothing was applied: a command of the held client moves log
		// time and the sweep on, which forgets "short" once it refilled.
		seq++
		c.release(&pb.ReleaseRequest{ClientId: []byte("c1"), Seq: seq, LeaseId: 1 << 40})
		return false
	})
	if !admitted {
		t.Fatalf("a new key was still refused %v after the only key's bucket refilled", opWait)
	}
}

// TestMaxSessionsRefusesNewClients is the regression test of a client
// certificate growing every replica with new client_ids, each kept
// fsm.SessionTTL: a command from a new client_id past the cap is refused,
// a held client's commands are served, and a Release or Extend is refused
// only when it could free nothing (a client_id without a session holds no
// lease) — else Releases from new client_ids were the same leak.
func TestMaxSessionsRefusesNewClients(t *testing.T) {
	var (
		regs perNodeRegistries
		logs testlog.Buffer
	)
	c := newTestCluster(t, 1, regs.option, func(c *Config) {
		c.MaxSessions = 2
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	c.setLimit("k", hourly(100))
	lease := c.acquire(take("c1", 1, "k", 1, time.Minute))
	if !lease.Allowed || lease.LeaseId == 0 {
		t.Fatalf("lease acquire: %v", lease)
	}
	c.acquire(take("c2", 1, "k", 1, 0))

	leader := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	_, err := leader.Acquire(ctx, take("c3", 1, "k", 1, 0))
	fullErr(t, err, transport.FullSessions, `the cluster holds 2 client sessions, at its cap (--max-sessions 2); client_id "c3" is new`)
	_, err = leader.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c3"), Seq: 1, Items: []*pb.ChargeItem{{Key: "k", Tokens: 1}}})
	fullErr(t, err, transport.FullSessions, `client_id "c3" is new`)
	_, err = leader.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c3"), Seq: 2, LeaseId: lease.LeaseId})
	fullErr(t, err, transport.FullSessions, `client_id "c3" is new`)
	_, err = leader.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("c3"), Seq: 3, LeaseId: lease.LeaseId, TtlNs: int64(time.Minute)})
	fullErr(t, err, transport.FullSessions, `client_id "c3" is new`)
	if got := leader.stats().Sessions; got != 2 {
		t.Fatalf("the leader holds %d sessions after the refusals, want 2", got)
	}
	if got := testutil.ToFloat64(leader.metrics.refusedSeries[capSessions]); got != 4 {
		t.Errorf("leasehold_requests_refused_total{reason=max_sessions} = %v, want 4", got)
	}
	// The log names the flag and its value, as the client's error does.
	if s := logs.String(); !strings.Contains(s, `msg="state machine full: refused a request that would add to it"`) ||
		!strings.Contains(s, "cap=max_sessions flag=--max-sessions max=2 held=2") {
		t.Errorf("logged, refusing at --max-sessions 2:\n%s\nwant the flag and its value", s)
	}

	// The held clients are served: an acquire, and the lease's holder
	// extends and releases it.
	if r := c.acquire(take("c2", 2, "k", 1, 0)); !r.Allowed {
		t.Errorf("acquire of a held client at the cap was denied")
	}
	ext := call(c, func(ctx context.Context, n *Node) (*pb.ExtendResponse, error) {
		return n.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("c1"), Seq: 2, LeaseId: lease.LeaseId, TtlNs: int64(time.Minute)})
	})
	if !ext.Extended {
		t.Errorf("extend of c1's lease at the cap: not extended")
	}
	if r := c.release(&pb.ReleaseRequest{ClientId: []byte("c1"), Seq: 3, LeaseId: lease.LeaseId}); !r.Released {
		t.Errorf("release of c1's lease at the cap: not released")
	}
}

// TestFullClusterSentNothingElseFreesRoom is the regression test of a full
// cluster standing still: a refusal proposed nothing, so with no admitted
// command log time stood still and the sweep never ran, and sessions long
// past fsm.SessionTTL of wall time kept a new client out until an operator
// wrote something. A refusal now nudges the sweep.
func TestFullClusterSentNothingElseFreesRoom(t *testing.T) {
	clock := &fakeClock{}
	c := newTestCluster(t, 1, func(cfg *Config) { cfg.Monotonic = clock.now; cfg.MaxSessions = 2 })
	c.setLimit("k", hourly(100))
	c.acquire(take("c1", 1, "k", 1, 0))
	c.acquire(take("c2", 1, "k", 1, 0))
	clock.advance(fsm.SessionTTL + time.Minute) // both sessions expired by wall time

	leader := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), opWait)
	defer cancel()
	_, err := leader.Acquire(ctx, take("c3", 1, "k", 1, 0))
	fullErr(t, err, transport.FullSessions, `client_id "c3" is new`)
	// Nothing else is sent: the refusal's nudge alone forgets them.
	waitFor(t, opWait, "forgetting of the expired sessions", func() bool { return leader.stats().Sessions == 0 })
	if r := c.acquire(take("c3", 1, "k", 1, 0)); !r.Allowed {
		t.Errorf("acquire of a new client once there is room: denied")
	}
}

// TestStatusAndMetricsSayTheCaps: Status and the gauges carry the node's
// caps beside what it holds, so that an operator or an alert can see how
// near the leader is to refusing.
func TestStatusAndMetricsSayTheCaps(t *testing.T) {
	var regs perNodeRegistries
	c := newTestCluster(t, 1, regs.option, func(c *Config) { c.MaxKeys, c.MaxSessions = 7, 3 })
	c.setLimit("k", hourly(100))
	c.acquire(take("c1", 1, "k", 1, 0))
	c.waitApplied()

	n := c.leader()
	st, err := n.Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != 1 || st.MaxKeys != 7 || st.Sessions != 1 || st.MaxSessions != 3 {
		t.Errorf("Status keys %d/%d, sessions %d/%d; want 1/7 and 1/3", st.Keys, st.MaxKeys, st.Sessions, st.MaxSessions)
	}
	for name, want := range map[string]float64{"leasehold_max_keys": 7, "leasehold_max_sessions": 3} {
		if got, _, ok := metricValue(t, regs.of(n.ID()), name, nil); !ok || got != want {
			t.Errorf("%s = %v (found %v), want %v", name, got, ok, want)
		}
	}
}

// TestFullSessionsErrorShowsABinaryClientIDInHex: the SDK's client_id is 16
// random bytes, which the refusal and the leader's log printed quoted, as
// a string of escapes (an attacker's pass). A printable one stays quoted.
func TestFullSessionsErrorShowsABinaryClientIDInHex(t *testing.T) {
	for id, want := range map[string]string{
		"c3":                 `"c3"`,
		"worker-7/ü":         `"worker-7/ü"`,
		"\x8f\x01\x00\xff":   "0x8f0100ff",
		"tab\there":          "0x" + hex.EncodeToString([]byte("tab\there")),
		string([]byte{0xc3}): "0xc3", // not UTF-8
	} {
		if got := showClientID(id); got != want {
			t.Errorf("showClientID(%q) = %s, want %s", id, got, want)
		}
	}
}
