package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// wantInvalid fails the test unless err, from a gRPC call, is
// INVALID_ARGUMENT naming field.
func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	var ie *transport.InvalidError
	if !errors.As(transport.FromStatus(err), &ie) || ie.Field != field {
		t.Errorf("%s: err = %v; want INVALID_ARGUMENT for %q", what, err, field)
	}
}

// TestChargeOverGRPC: a Charge over a real gRPC server of a one-node cluster
// debits into debt down to the key's max_debt and forgives the rest; a retry
// with the same seq gets the first answer and charges nothing again; a seq
// reused for another body, a key that is not a token bucket and a key with
// no limit are refused, nothing applied.
func TestChargeOverGRPC(t *testing.T) {
	g := newGRPCNode(t)
	ctx := t.Context()
	k := hourly(10)
	k.MaxDebt = 5
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: k}); err != nil {
		t.Fatal(err)
	}
	charge := &pb.ChargeRequest{ClientId: []byte("c"), Seq: 1, Items: []*pb.ChargeItem{{Key: "k", Tokens: 12}}}
	first, err := g.client.Charge(ctx, charge)
	if err != nil {
		t.Fatal(err)
	}
	if it := first.GetItems()[0]; it.GetCharged() != 12 || it.GetForgiven() != 0 || it.GetRemaining() != -2 ||
		first.GetRetryAfterNs() <= 0 || first.GetLogTimeNs() == 0 {
		t.Fatalf("charge of 12 of a full 10 that may owe 5 = %v; want 12 charged, 2 owed", first)
	}
	again, err := g.client.Charge(ctx, charge)
	if err != nil || !proto.Equal(again, first) {
		t.Errorf("the charge retried = %v, %v; want its first answer %v", again, err, first)
	}
	// Charged once: 3 more reach the cap, 6 are forgiven.
	second, err := g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 2, AckedBelow: 2,
		Items: []*pb.ChargeItem{{Key: "k", Tokens: 9}}})
	if err != nil {
		t.Fatal(err)
	}
	if it := second.GetItems()[0]; it.GetCharged() != 3 || it.GetForgiven() != 6 || it.GetRemaining() != -5 {
		t.Errorf("charge of 9 more = %v; want 3 charged, 6 forgiven, 5 owed", second)
	}

	before := g.logIndexes()
	_, err = g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 2, Items: []*pb.ChargeItem{{Key: "k", Tokens: 10}}})
	wantInvalid(t, "seq 2 reused for another charge", err, "seq")
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "slots",
		Limit: &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 2}}); err != nil {
		t.Fatal(err)
	}
	_, err = g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 3, Items: []*pb.ChargeItem{{Key: "k", Tokens: 1},
		{Key: "slots", Tokens: 1}}})
	wantInvalid(t, "charge of a concurrency key", err, "")
	_, err = g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 4, Items: []*pb.ChargeItem{{Key: "none", Tokens: 1}}})
	if !errors.Is(transport.FromStatus(err), transport.ErrNoLimit) {
		t.Errorf("charge of a key without a limit: err = %v; want ErrNoLimit", err)
	}
	_, err = g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 5, Items: []*pb.ChargeItem{{Key: "k", Tokens: 0}}})
	wantInvalid(t, "charge of 0 tokens", err, "items[0].tokens")
	if after := g.logIndexes(); after[0] != before[0]+4 { // the SetLimit and three refused in Apply
		t.Errorf("log went from %v to %v; want 4 entries (the invalid charge of 0 appends nothing)", before, after)
	}

	// With its limit inline, a key is created and charged.
	inline, err := g.client.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 6,
		Items: []*pb.ChargeItem{{Key: "fresh", Tokens: 4, Limit: k}}})
	if err != nil || inline.GetItems()[0].GetRemaining() != 6 {
		t.Errorf("charge with an inline limit = %v, %v; want 6 left", inline, err)
	}
	got, err := g.client.GetLimit(ctx, &pb.GetLimitRequest{Key: "fresh"})
	if err != nil || got.GetLimit().GetMaxDebt() != 5 {
		t.Errorf("GetLimit of the inline key = %v, %v; want max_debt 5", got, err)
	}
}

// TestExtendOverGRPC: an Extend keeps a lease's concurrency slot held past
// the TTL it was granted with, until it is released; a retry gets the first
// answer, a reused seq and another client's lease are refused, an unknown
// lease is not extended.
func TestExtendOverGRPC(t *testing.T) {
	g := newGRPCNode(t)
	ctx := t.Context()
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "slots",
		Limit: &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 1, MaxLeaseNs: int64(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	const ttl = 200 * time.Millisecond
	lease, err := g.client.Acquire(ctx, take("c", 1, "slots", 1, ttl))
	if err != nil || !lease.GetAllowed() {
		t.Fatalf("acquire = %v, %v", lease, err)
	}
	ext := &pb.ExtendRequest{ClientId: []byte("c"), Seq: 2, LeaseId: lease.GetLeaseId(), TtlNs: int64(30 * time.Second)}
	first, err := g.client.Extend(ctx, ext)
	if err != nil || !first.GetExtended() || first.GetTtlNs() != int64(30*time.Second) {
		t.Fatalf("extend = %v, %v; want extended by 30s", first, err)
	}
	if again, err := g.client.Extend(ctx, ext); err != nil || !proto.Equal(again, first) {
		t.Errorf("the extend retried = %v, %v; want its first answer %v", again, err, first)
	}
	_, err = g.client.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("c"), Seq: 2, LeaseId: lease.GetLeaseId(), TtlNs: int64(time.Second)})
	wantInvalid(t, "seq 2 reused for another extend", err, "seq")
	_, err = g.client.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("d"), Seq: 1, LeaseId: lease.GetLeaseId(), TtlNs: int64(time.Second)})
	wantInvalid(t, "extend of another client's lease", err, "")
	if r, err := g.client.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("c"), Seq: 3, LeaseId: 999, TtlNs: int64(time.Second)}); err != nil || r.GetExtended() {
		t.Errorf("extend of an unknown lease = %v, %v; want extended false", r, err)
	}

	// Past the granted TTL, by log time, the slot is still held.
	seq := uint64(1) // d's seq 1 was the refused extend
	waitFor(t, 10*time.Second, "log time past the lease's first TTL", func() bool {
		seq++
		r, err := g.client.Acquire(ctx, take("d", seq, "slots", 1, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if r.GetAllowed() {
			t.Fatalf("another client got the slot at log time %v after the grant, within the extension",
				time.Duration(r.GetLogTimeNs()-lease.GetLogTimeNs()))
		}
		return r.GetLogTimeNs() > lease.GetLogTimeNs()+int64(2*ttl)
	})
	if r, err := g.client.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 4, LeaseId: lease.GetLeaseId()}); err != nil || !r.GetReleased() {
		t.Fatalf("release of the extended lease = %v, %v", r, err)
	}
	seq++
	if r, err := g.client.Acquire(ctx, take("d", seq, "slots", 1, time.Second)); err != nil || !r.GetAllowed() {
		t.Errorf("acquire after the release = %v, %v; want the slot", r, err)
	}
}

// TestRestrictOverGRPC: a Restrict blocks a key; a retry gets the first
// answer and a reused seq is refused; the refund of a lease granted before
// the block does not reopen it; a concurrency key cannot be restricted.
func TestRestrictOverGRPC(t *testing.T) {
	g := newGRPCNode(t)
	ctx := t.Context()
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "r", Limit: hourly(100)}); err != nil {
		t.Fatal(err)
	}
	lease, err := g.client.Acquire(ctx, take("c", 1, "r", 10, 30*time.Second))
	if err != nil || !lease.GetAllowed() {
		t.Fatalf("acquire = %v, %v", lease, err)
	}
	block := &pb.RestrictRequest{ClientId: []byte("c"), Seq: 2, AckedBelow: 2,
		Items: []*pb.RestrictItem{{Key: "r", BlockedForNs: int64(time.Hour)}}}
	first, err := g.client.Restrict(ctx, block)
	if err != nil {
		t.Fatal(err)
	}
	// 90 held; empty an hour from now at 100 an hour: owes 100 now.
	if it := first.GetItems()[0]; it.GetRemaining() != -100 || it.GetLowered() != 190 ||
		first.GetRetryAfterNs() != int64(time.Hour+36*time.Second) {
		t.Fatalf("block for an hour = %v; want 100 owed, 190 lowered, a token in 1h0m36s", first)
	}
	if again, err := g.client.Restrict(ctx, block); err != nil || !proto.Equal(again, first) {
		t.Errorf("the restrict retried = %v, %v; want its first answer %v", again, err, first)
	}
	_, err = g.client.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 2,
		Items: []*pb.RestrictItem{{Key: "r", BlockedForNs: int64(2 * time.Hour)}}})
	wantInvalid(t, "seq 2 reused for another restrict", err, "seq")

	if r, err := g.client.Release(ctx, &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 3, LeaseId: lease.GetLeaseId(),
		Unused: []int64{10}}); err != nil || !r.GetReleased() {
		t.Fatalf("release = %v, %v", r, err)
	}
	r, err := g.client.Acquire(ctx, take("c", 4, "r", 1, 0))
	if err != nil || r.GetAllowed() || r.GetRetryAfterNs() < int64(time.Hour) {
		t.Errorf("acquire after the block and a refund = %v, %v; want denied for over an hour", r, err)
	}

	// remaining is optional: 0 lowers a fresh key (created from the
	// inline limit) to nothing.
	zero := int64(0)
	lowered, err := g.client.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 5,
		Items: []*pb.RestrictItem{{Key: "fresh", Remaining: &zero, Limit: hourly(100)}}})
	if err != nil || lowered.GetItems()[0].GetRemaining() != 0 || lowered.GetItems()[0].GetLowered() != 100 {
		t.Errorf("lower a fresh key to 0 = %v, %v", lowered, err)
	}
	if _, err := g.client.SetLimit(ctx, &pb.SetLimitRequest{Key: "slots",
		Limit: &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 2}}); err != nil {
		t.Fatal(err)
	}
	_, err = g.client.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 6,
		Items: []*pb.RestrictItem{{Key: "slots", BlockedForNs: int64(time.Second)}}})
	wantInvalid(t, "restrict of a concurrency key", err, "")
	_, err = g.client.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 7,
		Items: []*pb.RestrictItem{{Key: "r"}}})
	wantInvalid(t, "restrict of nothing", err, "items[0].blocked_for_ns")
}

// TestBudgetRPCsOnAFollower: a follower answers Charge, Extend and Restrict
// with NotLeader naming the leader, as it does Acquire, and appends nothing.
func TestBudgetRPCsOnAFollower(t *testing.T) {
	c := newTestCluster(t, 3)
	c.setLimit("k", hourly(10))
	leader := c.leader()
	for _, f := range c.followers(leader) {
		calls := map[string]func(context.Context) error{
			"Charge": func(ctx context.Context) error {
				_, err := f.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 1, Items: []*pb.ChargeItem{{Key: "k", Tokens: 1}}})
				return err
			},
			"Extend": func(ctx context.Context) error {
				_, err := f.Extend(ctx, &pb.ExtendRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 1, TtlNs: 1})
				return err
			},
			"Restrict": func(ctx context.Context) error {
				_, err := f.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 1,
					Items: []*pb.RestrictItem{{Key: "k", BlockedForNs: 1}}})
				return err
			},
		}
		for name, call := range calls {
			// Polled: under load the follower can be between leaders for
			// a moment ("no leader is known": this test failed so in CI).
			waitFor(t, opWait, name+" on a follower naming the leader", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), opWait)
				err := call(ctx)
				cancel()
				var nl *transport.NotLeaderError
				if !errors.As(err, &nl) {
					if f.IsLeader() {
						return false // leadership moved to it meanwhile
					}
					t.Fatalf("%s on follower %s: err = %v; want *transport.NotLeaderError", name, f.ID(), err)
				}
				return nl.LeaderID == c.leader().ID()
			})
		}
	}
}
