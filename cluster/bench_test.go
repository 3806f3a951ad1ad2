package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// BenchmarkClusterAcquire measures the central write path end to end: three
// nodes in this process on loopback, each with its real bbolt store (an fsync
// per append), production Raft timings, and a fixed pool of client goroutines
// that each call the leader's Acquire (TTL 0, one token) on one hot key whose
// limit the run cannot drain. Every acquire is a committed, applied command.
// It reports acquires/s; ns/op is wall time per acquire over all workers, so
// with workers=1 it is the latency of a lone request.
//
//	go test -run '^$' -bench BenchmarkClusterAcquire -benchtime 3s -count 5 ./cluster/
func BenchmarkClusterAcquire(b *testing.B) {
	for _, workers := range []int{1, 8, 64, 1024, 4096} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) { benchClusterAcquire(b, workers) })
	}
}

func benchClusterAcquire(b *testing.B, workers int, opts ...func(*Config)) {
	c := newTestCluster(b, 3, append([]func(*Config){func(cfg *Config) {
		d := DefaultConfig()
		cfg.Logger = slog.New(slog.DiscardHandler) // shutdown noise, not results
		cfg.HeartbeatTimeout, cfg.ElectionTimeout = d.HeartbeatTimeout, d.ElectionTimeout
		cfg.LeaderLeaseTimeout, cfg.CommitTimeout = d.LeaderLeaseTimeout, d.CommitTimeout
	}}, opts...)...)
	c.setLimit("hot", &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1e12, PeriodNs: int64(time.Hour)})

	var leader atomic.Pointer[Node]
	leader.Store(c.leader())
	var retries, failures atomic.Int64
	work := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Appendf(nil, "bench-%d", w)
			// One context for the whole run: a deadline per call would
			// cost the benchmark more than it measures.
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			var seq uint64
			for range work {
				seq++
				req := &pb.AcquireRequest{ClientId: id, Seq: seq, AckedBelow: seq,
					Items: []*pb.AcquireItem{{Key: "hot", Count: 1}}}
				for {
					resp, err := leader.Load().Acquire(ctx, req)
					if err == nil {
						if !resp.GetAllowed() {
							failures.Add(1)
						}
						break
					}
					if !retryable(err) {
						failures.Add(1)
						break
					}
					// Leadership moved: find the new leader and retry
					// with the same seq, as a client would.
					retries.Add(1)
					if n := readyLeader(c.nodes); n != nil {
						leader.Store(n)
					}
				}
			}
		}()
	}

	b.ReportAllocs()
	start := time.Now()
	cpu0 := processCPU()
	index0 := c.leader().raft.LastIndex()
	for b.Loop() {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "acquires/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	if n := readyLeader(c.nodes); n != nil {
		b.ReportMetric(float64(n.raft.LastIndex()-index0)*1000/float64(b.N), "entries/1000")
	}
	if r := retries.Load(); r > 0 {
		b.Logf("%d retries after a leader change", r)
	}
	if f := failures.Load(); f > 0 {
		b.Errorf("%d of %d acquires failed or were denied", f, b.N)
	}
}

// readyLeader waits up to electionWait for a ready leader among nodes (nil
// entries are skipped) and returns it, or nil if there is none. Safe to call
// from any goroutine: it never stops the test.
func readyLeader(nodes []*Node) *Node {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(electionWait)
	for {
		for _, n := range nodes {
			if n != nil && n.readyToStamp() {
				return n
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		<-tick.C
	}
}
