package cluster

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/fsm"
)

// benchAdapterEntries returns a warm-up entry creating 1000 keys, and ring
// entries of 1000 Acquires each (one key, an inline token bucket, from 100
// clients over the 1000 keys, as 2s leases), as fsm's
// BenchmarkApplyBatch1000 builds them: the leader's hot path.
func benchAdapterEntries(ring int) (warm *raft.Log, logs []*raft.Log) {
	lim := fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1_000_000, Period: time.Second, MaxLease: 2 * time.Second}
	seqs := make([]uint64, 100)
	now := int64(0)
	index := uint64(0)
	batch := func(ttl time.Duration) *raft.Log {
		cmds := make([]fsm.Command, 0, 1000)
		for i := range 1000 {
			c := i % 100
			seqs[c]++
			cmds = append(cmds, &fsm.Acquire{ClientID: fmt.Sprintf("client-%03d", c), Seq: seqs[c], AckedBelow: seqs[c],
				TTL: ttl, Items: []fsm.Item{{Key: fmt.Sprintf("tenant-%04d:gpt-4.1", i), Count: 1, Want: 10, Limit: &lim}}})
		}
		now += int64(time.Millisecond)
		index++
		return &raft.Log{Index: index, Type: raft.LogCommand, Data: fsm.Encode(nil, now, &fsm.Batch{Commands: cmds})}
	}
	warm = batch(0)
	for range ring {
		logs = append(logs, batch(2*time.Second))
	}
	return warm, logs
}

// BenchmarkAdapterApplyBatch1000 is fsm's BenchmarkApplyBatch1000 through
// the raft.FSM adapter, with the per-key activity and the metrics (on) and
// without (off): what counting every applied command outside the machine
// costs the apply path. Compare the two in one run (-count 6, benchstat).
func BenchmarkAdapterApplyBatch1000(b *testing.B) {
	warm, ring := benchAdapterEntries(64)
	for _, on := range []bool{false, true} {
		name := "tracking=off"
		if on {
			name = "tracking=on"
		}
		b.Run(name, func(b *testing.B) {
			stop := make(chan struct{})
			defer close(stop)
			fresh := func() *machineFSM {
				if !on {
					f := newMachineFSM(nil, nil)
					f.ApplyBatch([]*raft.Log{warm})
					return f
				}
				m, err := newNodeMetrics(prometheus.NewRegistry(), &Node{})
				if err != nil {
					b.Fatal(err)
				}
				a := newActivity(m)
				go a.run(stop)
				f := newMachineFSM(a, m)
				f.ApplyBatch([]*raft.Log{warm})
				return f
			}
			f := fresh()
			batch := make([]*raft.Log, 1)
			i := 0
			b.ReportAllocs()
			runtime.LockOSThread() // so that threadCPU is the apply goroutine's
			defer runtime.UnlockOSThread()
			cpu0, thread0 := processCPU(), threadCPU()
			for b.Loop() {
				if i == len(ring) {
					b.StopTimer()
					f, i = fresh(), 0
					b.StartTimer()
				}
				batch[0] = ring[i]
				out := f.ApplyBatch(batch)
				if rs := out[0].([]fsm.Result); rs[0].Status != fsm.StatusOK {
					b.Fatalf("entry %d: %v %s", i, rs[0].Status, rs[0].Message)
				}
				i++
			}
			b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "acquires/s")
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(threadCPU()-thread0)/float64(b.N), "apply-cpu-ns/op")
		})
	}
}

// BenchmarkClusterAcquireMetrics is BenchmarkClusterAcquire (64 workers) with
// everything this node reports turned off (no registry, no per-key
// activity, raft's go-metrics going nowhere, as before metrics existed) and
// on (a registry, the activity, raft's metrics bridged): the cost of
// observability on the central write path.
//
//	go test -run '^$' -bench BenchmarkClusterAcquireMetrics -benchtime 3s -count 6 ./cluster/
func BenchmarkClusterAcquireMetrics(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "metrics=off"
		if on {
			name = "metrics=on"
		}
		b.Run(name, func(b *testing.B) {
			if on {
				sink, err := newRaftSink(prometheus.NewRegistry())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := gometrics.NewGlobal(raftMetricsConfig(), sink); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(gometrics.Shutdown) // back to go-metrics' black hole
				benchClusterAcquire(b, 64, func(c *Config) { c.Metrics = prometheus.NewRegistry() })
				return
			}
			benchClusterAcquire(b, 64, func(c *Config) { c.noActivity = true })
		})
	}
}
