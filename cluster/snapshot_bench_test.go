package cluster

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
)

// discardSink is a raft.SnapshotSink that drops what it is given.
type discardSink struct{ n int64 }

func (s *discardSink) Write(p []byte) (int, error) { s.n += int64(len(p)); return len(p), nil }
func (s *discardSink) ID() string                  { return "discard" }
func (s *discardSink) Close() error                { return nil }
func (s *discardSink) Cancel() error               { return nil }

// snapBenchLimit is the inline limit of every key of the snapshot benchmarks:
// a token refills in 36s, so a key that gave one stays (the idle sweep skips
// it) for longer than a run's log time, and a burst of 100 serves every
// acquire of the run.
var snapBenchLimit = fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 100, Period: time.Hour}

// fillIdleKeys applies central acquires (no client id: no session, no lease)
// creating n token-bucket keys named tenant-%07d, 1024 to an entry.
func fillIdleKeys(tb testing.TB, f *machineFSM, n int) {
	tb.Helper()
	const per = 1024
	items := make([]fsm.Item, per)
	acqs := make([]fsm.Acquire, per)
	cmds := make([]fsm.Command, 0, per)
	var data []byte
	for lo := 0; lo < n; lo += per {
		cmds = cmds[:0]
		for i := range min(per, n-lo) {
			items[i] = fsm.Item{Key: fmt.Sprintf("tenant-%07d", lo+i), Count: 1, Limit: &snapBenchLimit}
			acqs[i] = fsm.Acquire{Items: items[i : i+1]}
			cmds = append(cmds, &acqs[i])
		}
		data = fsm.Encode(data[:0], 0, &fsm.Batch{Commands: cmds})
		f.ApplyBatch([]*raft.Log{{Type: raft.LogCommand, Data: data}})
	}
}

// leaseBatch returns an entry of per leased acquires (TTL 100ms, one token) by
// 64 clients on keys spread over the first n, starting at seq and time now.
func leaseBatch(per, n int, seq uint64, now time.Duration) []byte {
	items := make([]fsm.Item, per)
	acqs := make([]fsm.Acquire, per)
	cmds := make([]fsm.Command, per)
	for i := range per {
		k := (int(seq)*per + i) * 7919 % n
		items[i] = fsm.Item{Key: fmt.Sprintf("tenant-%07d", k), Count: 1, Limit: &snapBenchLimit}
		acqs[i] = fsm.Acquire{ClientID: fmt.Sprintf("client-%02d", i%64), Seq: seq*uint64(per) + uint64(i) + 1,
			TTL: 100 * time.Millisecond, Items: items[i : i+1]}
		cmds[i] = &acqs[i]
	}
	return fsm.Encode(nil, int64(now), &fsm.Batch{Commands: cmds})
}

// BenchmarkSnapshotStall measures what a snapshot costs the write path at 1M
// and 2M token-bucket keys, plus the live leases and sessions that a stream
// of leased acquires keeps (log time advances 1ms an entry and leases live
// 100ms: about 100k leases; 64 client sessions).
//
// Raft calls Snapshot on its FSM goroutine, the one that applies entries, so
// Apply (and every read, through the lock) waits for the whole of Snapshot:
// hold-ms is that time. Persist runs on another goroutine, concurrently with
// Apply; while it runs a writer goroutine applies 1024-command entries in a
// loop (under the lock, as raft would), and apply-max-ms is the slowest of
// those applies, apply-p50-us their median, both against a quiet baseline
// from before the snapshot (base-apply-p50-us, base-apply-max-ms over 64
// applies). The stall a write sees is
// hold-ms plus its own apply. total-ms is Snapshot plus
// Persist into a sink that drops the bytes. heap-MB is the extra heap the
// snapshot holds right after Snapshot returns.
//
//	go test -run '^$' -bench BenchmarkSnapshotStall -benchtime 5x -count 6 ./cluster/
func BenchmarkSnapshotStall(b *testing.B) {
	for _, n := range []int{1_000_000, 2_000_000} {
		b.Run(fmt.Sprintf("keys=%dM", n/1_000_000), func(b *testing.B) { benchSnapshotStall(b, n) })
	}
}

func benchSnapshotStall(b *testing.B, n int) {
	f := newMachineFSM(newActivity(nil), nil)
	fillIdleKeys(b, f, n)
	const per = 1024
	// A ring of leased-acquire entries, prepared ahead so the writer only
	// applies. Time advances 1ms an entry, so leases expire and sessions stay.
	const ring = 256
	entries := make([][]byte, ring)
	for i := range entries {
		entries[i] = leaseBatch(per, n, uint64(i), time.Duration(i+1)*time.Millisecond)
	}
	var seq atomic.Uint64
	apply := func() time.Duration {
		i := seq.Add(1) - 1
		data := entries[i%ring]
		if i >= ring { // later laps: new seqs and stamps, so nothing is a retry
			data = leaseBatch(per, n, i, time.Duration(i+1)*time.Millisecond)
		}
		l := []*raft.Log{{Type: raft.LogCommand, Data: data}}
		t0 := time.Now()
		f.ApplyBatch(l)
		return time.Since(t0)
	}
	for range ring {
		apply()
	}
	// The baseline applies, like those during Persist, entries built on
	// the fly: the same garbage, so the same GC work.
	base := make([]time.Duration, 0, 64)
	for range cap(base) {
		base = append(base, apply())
	}
	var hold, total, applyMax, applyP50 time.Duration
	var heap uint64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		t0 := time.Now()
		snap, err := f.Snapshot()
		h := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap += after.HeapAlloc - before.HeapAlloc

		// The writer applies while Persist runs, as raft's FSM goroutine
		// would; its first apply waited for the capture above.
		var (
			wg   sync.WaitGroup
			stop atomic.Bool
			lat  []time.Duration
		)
		wg.Go(func() {
			for !stop.Load() {
				lat = append(lat, apply())
			}
		})
		var sink discardSink
		if err := snap.Persist(&sink); err != nil {
			b.Fatal(err)
		}
		total += h + time.Since(t0.Add(h))
		stop.Store(true)
		wg.Wait()
		snap.Release()
		hold += h
		slices.Sort(lat)
		if len(lat) > 0 {
			applyMax += lat[len(lat)-1]
			applyP50 += lat[len(lat)/2]
		}
	}
	slices.Sort(base)
	iters := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 / iters }
	b.ReportMetric(ms(hold), "hold-ms")
	b.ReportMetric(ms(total), "total-ms")
	b.ReportMetric(ms(applyMax), "apply-max-ms")
	b.ReportMetric(float64(applyP50)/1e3/iters, "apply-p50-us")
	b.ReportMetric(float64(base[len(base)/2])/1e3, "base-apply-p50-us")
	b.ReportMetric(float64(base[len(base)-1])/1e6, "base-apply-max-ms")
	b.ReportMetric(float64(heap)/1e6/iters, "heap-MB")
	b.ReportMetric(0, "ns/op")
	var st fsm.Stats
	f.read(func(m *fsm.Machine) { st = m.Stats() })
	b.Logf("%d keys, %d leases, %d sessions", st.Keys, st.Leases, st.Sessions)
}

var _ io.Writer = (*discardSink)(nil)
