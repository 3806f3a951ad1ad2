package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// BenchmarkDeleteKeys compares clearing a client's keys with DeleteLimits
// against one DeleteLimit per key, on three nodes in this process with
// their real stores (an fsync per append) and production Raft timings. A
// round fills 100 000 unpinned keys and times the bulk delete of all of
// them (bulk-s/100k), then fills 1000 and times deleting them one at a
// time, scaled to 100 000 (one-by-one-s/100k, an estimate). It reports the
// ratio; run rounds with -benchtime 1x -count N to interleave them.
//
//	go test -run '^$' -bench BenchmarkDeleteKeys -benchtime 1x -count 3 ./cluster/
func BenchmarkDeleteKeys(b *testing.B) {
	c := newTestCluster(b, 3, func(cfg *Config) {
		d := DefaultConfig()
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.HeartbeatTimeout, cfg.ElectionTimeout = d.HeartbeatTimeout, d.ElectionTimeout
		cfg.LeaderLeaseTimeout, cfg.CommitTimeout = d.LeaderLeaseTimeout, d.CommitTimeout
	})
	const keys, sample = 100_000, 1000
	var bulk, single time.Duration
	for round := 0; b.Loop(); round++ {
		prefix := fmt.Sprintf("bulk-%d/", round)
		fillKeys(b, c, prefix, keys)
		start := time.Now()
		req := &pb.DeleteLimitsRequest{Prefix: prefix, UnpinnedOnly: true}
		deleted := int64(0)
		for {
			resp := call(c, func(ctx context.Context, n *Node) (*pb.DeleteLimitsResponse, error) { return n.DeleteLimits(ctx, req) })
			deleted += resp.GetDeleted()
			if !resp.GetMore() {
				break
			}
			req.StartAfter = resp.GetLastKey()
		}
		bulk += time.Since(start)
		if deleted != keys {
			b.Fatalf("bulk delete deleted %d keys; want %d", deleted, keys)
		}

		prefix = fmt.Sprintf("single-%d/", round)
		fillKeys(b, c, prefix, sample)
		start = time.Now()
		for i := range sample {
			req := &pb.DeleteLimitRequest{Key: fmt.Sprintf("%s%06d", prefix, i)}
			if resp := call(c, func(ctx context.Context, n *Node) (*pb.DeleteLimitResponse, error) { return n.DeleteLimit(ctx, req) }); !resp.GetFound() {
				b.Fatalf("%s: not found", req.GetKey())
			}
		}
		single += time.Since(start) * keys / sample
	}
	b.ReportMetric(bulk.Seconds()/float64(b.N), "bulk-s/100k")
	b.ReportMetric(single.Seconds()/float64(b.N), "one-by-one-s/100k")
	b.ReportMetric(single.Seconds()/bulk.Seconds(), "ratio")
}

// fillKeys has clients create n unpinned keys "prefix%06d", drained, with a
// period of an hour so the idle sweep keeps them: 8 keys an acquire, from
// 32 goroutines so that they share entries.
func fillKeys(b *testing.B, c *testCluster, prefix string, n int) {
	b.Helper()
	l := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1, PeriodNs: int64(time.Hour)}
	const workers = 32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Appendf(nil, "fill-%s%d", prefix, w)
			seq := uint64(0)
			for i := w * 8; i < n; i += workers * 8 {
				seq++
				req := &pb.AcquireRequest{ClientId: id, Seq: seq, AckedBelow: seq}
				for k := i; k < min(i+8, n); k++ {
					req.Items = append(req.Items, &pb.AcquireItem{Key: fmt.Sprintf("%s%06d", prefix, k), Count: 1, Limit: l})
				}
				if resp := c.acquire(req); !resp.GetAllowed() {
					b.Errorf("acquire of %s..: denied", req.Items[0].GetKey())
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}
