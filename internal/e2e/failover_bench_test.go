package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// BenchmarkFailover measures leader failover as a client sees it: from kill -9
// of the leader to the first acquire granted by the next one, polling every
// live node every 5ms. Run it with -benchtime=5x; it reports the median.
//
//	go test -run='^$' -bench=Failover -benchtime=5x ./internal/e2e/
func BenchmarkFailover(b *testing.B) {
	c := startCluster(b, 3)
	var gaps []time.Duration
	seq := uint64(0)
	for b.Loop() {
		old := c.waitLeader(30 * time.Second)
		killed := time.Now()
		c.kill(old)
		for {
			granted := false
			for _, node := range c.Nodes() {
				if !node.Running() {
					continue
				}
				seq++
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				r, err := node.API().Acquire(ctx, &pb.AcquireRequest{
					ClientId: []byte("failover-bench"), Seq: seq, Items: item("failover", 1, &pb.Limit{
						Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1_000_000, PeriodNs: int64(time.Second)})})
				cancel()
				if err == nil && r.Allowed {
					granted = true
					break
				}
			}
			if granted {
				break
			}
			if time.Since(killed) > time.Minute {
				b.Fatal("no grant within a minute of the kill")
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
		gaps = append(gaps, time.Since(killed))
		c.start(old)
		c.waitHealthy(60 * time.Second)
	}
	slices.Sort(gaps)
	b.ReportMetric(float64(gaps[len(gaps)/2].Milliseconds()), "ms-median-failover")
	b.ReportMetric(float64(gaps[len(gaps)-1].Milliseconds()), "ms-max-failover")
	b.Logf("kill -> first grant: %v", gaps)
}
