package cluster

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// ListLimits on the leader pages through the keys in byte order, pinned or
// defined by a client's acquire, with the limits GetLimit reports; a
// follower names the leader rather than answer from its own state.
func TestListLimitsPagesOnTheLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	for _, k := range []string{"tenant-c", "tenant-a", "other", "tenant-b"} {
		c.setLimit(k, hourly(100))
	}
	inline := take("client", 1, "tenant-d", 1, 0)
	inline.Items[0].Limit = hourly(7)
	if resp := c.acquire(inline); !resp.GetAllowed() {
		t.Fatalf("acquire defining tenant-d = %v", resp)
	}

	list := func(req *pb.ListLimitsRequest) *pb.ListLimitsResponse {
		return call(c, func(ctx context.Context, n *Node) (*pb.ListLimitsResponse, error) { return n.ListLimits(ctx, req) })
	}
	var keys []string
	req := &pb.ListLimitsRequest{Prefix: "tenant-", PageSize: 3}
	for pages := 1; ; pages++ {
		resp := list(req)
		for _, l := range resp.GetLimits() {
			keys = append(keys, l.GetKey())
			if pinned := l.GetKey() != "tenant-d"; l.GetPinned() != pinned {
				t.Errorf("%s pinned = %v, want %v", l.GetKey(), l.GetPinned(), pinned)
			}
			want := int64(100)
			if l.GetKey() == "tenant-d" {
				want = 7
			}
			if got := l.GetLimit().GetLimit(); got != want {
				t.Errorf("%s limit = %d, want %d", l.GetKey(), got, want)
			}
		}
		if !resp.GetMore() {
			if pages != 2 {
				t.Errorf("listed in %d pages of 3, want 2", pages)
			}
			break
		}
		req.StartAfter = keys[len(keys)-1]
	}
	if want := []string{"tenant-a", "tenant-b", "tenant-c", "tenant-d"}; !slices.Equal(keys, want) {
		t.Errorf("listed %v, want %v", keys, want)
	}
	pinned := list(&pb.ListLimitsRequest{PinnedOnly: true})
	if got := len(pinned.GetLimits()); got != 4 || pinned.GetMore() {
		t.Errorf("pinned only: %d keys (more %v), want the 4 set by SetLimit", got, pinned.GetMore())
	}

	waitFor(t, opWait, "a follower naming the leader", func() bool {
		leader := c.leader()
		for _, f := range c.followers(leader) {
			_, err := f.ListLimits(context.Background(), &pb.ListLimitsRequest{})
			var nl *transport.NotLeaderError
			if !errors.As(err, &nl) {
				if f.IsLeader() {
					return false // leadership moved to it meanwhile
				}
				t.Fatalf("ListLimits on follower %s: err = %v; want *transport.NotLeaderError", f.ID(), err)
			}
		}
		return true
	})
}
