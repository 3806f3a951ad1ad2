package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// slowBucket refills one token an hour: whatever a test drains stays drained
// for the test's life, so any refill it sees is a bug, not time passing.
func slowBucket(burst int64) *pb.Limit {
	return &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1, PeriodNs: int64(time.Hour), Burst: burst,
		MaxLeaseNs: int64(time.Minute)}
}

func acquire(t testing.TB, c *procCluster, req *pb.AcquireRequest) *pb.AcquireResponse {
	t.Helper()
	return onLeader(t, c, 60*time.Second, func(ctx context.Context, lc pb.LeaseholdClient) (*pb.AcquireResponse, error) {
		return lc.Acquire(ctx, req)
	})
}

func item(key string, count int64, lim *pb.Limit) []*pb.AcquireItem {
	return []*pb.AcquireItem{{Key: key, Count: count, Limit: lim}}
}

// TestFullRestartKeepsDrainedBucket is DESIGN.md invariant 6: after every node
// is killed (and, separately, stopped gracefully) and restarted with the same
// data, a drained bucket is still drained and an acknowledged lease is still
// there to release.
func TestFullRestartKeepsDrainedBucket(t *testing.T) {
	c := startCluster(t, 3)
	client := []byte("restart-test")
	lease := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: 1, Items: item("drain", 3, slowBucket(10)), TtlNs: int64(time.Minute)})
	if !lease.Allowed || lease.LeaseId == 0 || lease.Items[0].Granted != 3 {
		t.Fatalf("lease acquire = %v, want a lease of 3", lease)
	}
	rest := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: 2, Items: item("drain", 7, slowBucket(10))})
	if !rest.Allowed {
		t.Fatalf("central acquire of the other 7 = %v, want allowed", rest)
	}
	seq := uint64(3)
	drained := func(when string) {
		t.Helper()
		r := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: seq, Items: item("drain", 1, slowBucket(10))})
		seq++
		if r.Allowed {
			t.Fatalf("%s: acquire of 1 from a drained bucket = %v, want denied", when, r)
		}
	}
	drained("before restart")

	for _, how := range []struct {
		name string
		stop func(*proc.Node)
	}{{"kill -9", c.kill}, {"SIGTERM", c.stop}} {
		for _, node := range c.Nodes() {
			how.stop(node)
		}
		for _, node := range c.Nodes() {
			c.start(node)
		}
		c.waitLeader(60 * time.Second)
		drained("after " + how.name + " of every node")
	}

	rel := onLeader(t, c, 60*time.Second, func(ctx context.Context, lc pb.LeaseholdClient) (*pb.ReleaseResponse, error) {
		return lc.Release(ctx, &pb.ReleaseRequest{ClientId: client, Seq: seq, LeaseId: lease.LeaseId, Unused: []int64{3}})
	})
	seq++
	if !rel.Released {
		t.Fatalf("release of the acknowledged lease after restarts = %v, want released", rel)
	}
	back := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: seq, Items: item("drain", 3, slowBucket(10))})
	if !back.Allowed {
		t.Fatalf("acquire of the 3 released tokens = %v, want allowed", back)
	}
}

// TestRetriedAcquireIsNotGrantedTwice: a reply lost on the way back makes the
// client retry with the same (client_id, seq); the retry, even on a new leader,
// returns the first grant and takes nothing more.
func TestRetriedAcquireIsNotGrantedTwice(t *testing.T) {
	c := startCluster(t, 3)
	client := []byte("retry-test")
	first := &pb.AcquireRequest{ClientId: client, Seq: 1, Items: item("retry", 6, slowBucket(10)), TtlNs: int64(time.Minute)}
	r1 := acquire(t, c, first)
	if !r1.Allowed || r1.Items[0].Granted != 6 {
		t.Fatalf("first acquire = %v, want 6 granted", r1)
	}
	r2 := acquire(t, c, first) // the "lost reply" retry
	if r2.LeaseId != r1.LeaseId || r2.Items[0].Granted != 6 || r2.LogTimeNs != r1.LogTimeNs {
		t.Fatalf("retry = %v, want the first result %v", r2, r1)
	}
	// The retry again, through a new leader.
	c.kill(c.waitLeader(30 * time.Second))
	r3 := acquire(t, c, first)
	if r3.LeaseId != r1.LeaseId || r3.LogTimeNs != r1.LogTimeNs {
		t.Fatalf("retry on a new leader = %v, want the first result %v", r3, r1)
	}
	// Only 4 tokens are left: had a retry been granted again, even 4 would fail.
	if r := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: 2, Items: item("retry", 5, slowBucket(10))}); r.Allowed {
		t.Fatalf("acquire of 5 with 4 left = %v, want denied", r)
	}
	if r := acquire(t, c, &pb.AcquireRequest{ClientId: client, Seq: 3, Items: item("retry", 4, slowBucket(10))}); !r.Allowed {
		t.Fatalf("acquire of the 4 left = %v, want allowed", r)
	}
}
