package cluster

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
)

// memorySink is a raft.SnapshotSink into a buffer.
type memorySink struct {
	bytes.Buffer
	closed, canceled bool
}

func (s *memorySink) ID() string    { return "test" }
func (s *memorySink) Close() error  { s.closed = true; return nil }
func (s *memorySink) Cancel() error { s.canceled = true; return nil }

func commandLog(t *testing.T, index uint64, now time.Duration, c fsm.Command) *raft.Log {
	t.Helper()
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: fsm.Encode(nil, int64(now), c)}
}

// TestMachineFSM: the adapter applies commands, ignores other entries, and a
// snapshot it persists restores to a machine that writes the same snapshot.
func TestMachineFSM(t *testing.T) {
	f := newMachineFSM(newActivity(nil), nil)
	limit := fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 10, Period: time.Second}
	res := f.Apply(commandLog(t, 1, time.Second, &fsm.SetLimit{Key: "k", Limit: limit}))
	if rs, ok := res.([]fsm.Result); !ok || len(rs) != 1 || rs[0].Status != fsm.StatusOK {
		t.Fatalf("Apply(SetLimit) = %#v; want one OK result", res)
	}
	acq := &fsm.Acquire{ClientID: "c", Seq: 1, Items: []fsm.Item{{Key: "k", Count: 4}}, TTL: time.Second}
	rs := f.Apply(commandLog(t, 2, 2*time.Second, acq)).([]fsm.Result)
	if rs[0].Status != fsm.StatusOK || rs[0].LeaseID == 0 {
		t.Fatalf("Apply(Acquire) = %+v; want a lease", rs[0])
	}
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration} {
		if got := f.Apply(&raft.Log{Index: 3, Type: typ, Data: []byte{0xff}}); got != nil {
			t.Errorf("Apply(%v) = %v; want nil", typ, got)
		}
	}
	if got := f.now(); got != int64(2*time.Second) {
		t.Errorf("now() = %d; want 2s", got)
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Apply goes on after the capture; the snapshot keeps the captured state.
	f.Apply(commandLog(t, 4, 3*time.Second, &fsm.DeleteLimit{Key: "k"}))
	var sink memorySink
	if err := snap.Persist(&sink); err != nil || !sink.closed || sink.canceled {
		t.Fatalf("Persist = %v (closed %v, canceled %v)", err, sink.closed, sink.canceled)
	}
	snap.Release()

	g := newMachineFSM(newActivity(nil), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	var stats fsm.Stats
	var again bytes.Buffer
	g.read(func(m *fsm.Machine) {
		stats = m.Stats()
		if err := m.Snapshot(&again); err != nil {
			t.Errorf("snapshot of the restored machine: %v", err)
		}
	})
	if stats.Keys != 1 || stats.Leases != 1 || stats.Sessions != 1 {
		t.Errorf("restored stats = %+v; want 1 key, 1 lease, 1 session", stats)
	}
	if !bytes.Equal(again.Bytes(), sink.Bytes()) {
		t.Errorf("restored machine's snapshot differs from the one it was restored from")
	}

	// A corrupt snapshot leaves the machine as it was.
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte("garbage")))); err == nil {
		t.Error("Restore of garbage succeeded")
	}
	if g.now() != int64(2*time.Second) {
		t.Errorf("machine changed by a failed restore")
	}
}

// snapshotBytes returns the machine's snapshot as fsm.Machine.Snapshot writes
// it, under the adapter's lock.
func snapshotBytes(t *testing.T, f *machineFSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	f.read(func(m *fsm.Machine) {
		if err := m.Snapshot(&buf); err != nil {
			t.Fatal(err)
		}
	})
	return buf.Bytes()
}

// TestSnapshotPersistDuringApply: raft persists a snapshot on its own
// goroutine while the FSM goroutine goes on applying. What Persist writes is
// byte for byte the machine's snapshot at the moment of Snapshot(), with
// nothing applied after it leaking in, and it restores to that state. Under
// the race detector it also checks that Apply and Persist share no written
// memory. The entries touch every kind of record a capture shares: token
// buckets, sliding windows, concurrency keys, leases (granted, released,
// expired, relabelled by SetLimit), sessions, and key deletions.
func TestSnapshotPersistDuringApply(t *testing.T) {
	limits := []fsm.Limit{
		{Algorithm: fsm.TokenBucket, Limit: 1000, Period: time.Second},
		{Algorithm: fsm.SlidingWindow, Limit: 1000, Period: time.Second, Slots: 10},
		{Algorithm: fsm.Concurrency, Limit: 1000},
	}
	index := uint64(0)
	type held struct {
		id     uint64
		client string
	}
	var leases []held
	entry := func(now time.Duration, round int) *raft.Log {
		var cmds []fsm.Command
		for i := range 200 {
			key := fmt.Sprintf("k%03d", (round*37+i)%300)
			lim := limits[i%len(limits)]
			client := fmt.Sprintf("c%d", i%8)
			seq := uint64(round*200 + i + 1)
			switch {
			case i%50 == 7:
				cmds = append(cmds, &fsm.SetLimit{Key: key, Limit: limits[(i+round)%len(limits)]})
			case i%50 == 9:
				cmds = append(cmds, &fsm.DeleteLimit{Key: key})
			case i%5 == 3 && len(leases) > 0:
				l := leases[0]
				leases = leases[1:]
				cmds = append(cmds, &fsm.Release{ClientID: l.client, Seq: seq, LeaseID: l.id})
			default:
				cmds = append(cmds, &fsm.Acquire{ClientID: client, Seq: seq, TTL: 300 * time.Millisecond,
					Items: []fsm.Item{{Key: key, Count: 1, Limit: &lim}}})
			}
		}
		index++
		return &raft.Log{Index: index, Type: raft.LogCommand, Data: fsm.Encode(nil, int64(now), &fsm.Batch{Commands: cmds})}
	}
	f := newMachineFSM(newActivity(nil), nil)
	apply := func(round int) {
		l := entry(time.Hour+time.Duration(round)*10*time.Millisecond, round)
		out := f.ApplyBatch([]*raft.Log{l})
		for i, r := range out[0].([]fsm.Result) {
			if r.LeaseID != 0 {
				leases = append(leases, held{r.LeaseID, fmt.Sprintf("c%d", i%8)})
			}
		}
	}
	round := 0
	for ; round < 50; round++ {
		apply(round)
	}
	for range 3 {
		want := snapshotBytes(t, f)
		snap, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var (
			wg      sync.WaitGroup
			sink    memorySink
			persist error
		)
		wg.Go(func() { persist = snap.Persist(&sink) })
		for range 50 {
			apply(round)
			round++
		}
		wg.Wait()
		snap.Release()
		if persist != nil || !sink.closed || sink.canceled {
			t.Fatalf("Persist = %v (closed %v, canceled %v)", persist, sink.closed, sink.canceled)
		}
		if !bytes.Equal(sink.Bytes(), want) {
			t.Fatalf("after round %d: persisted snapshot differs from the machine's snapshot at capture", round)
		}
		if bytes.Equal(snapshotBytes(t, f), want) {
			t.Fatal("the machine did not change after the capture: the test checks nothing")
		}
		g := newMachineFSM(newActivity(nil), nil)
		if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if !bytes.Equal(snapshotBytes(t, g), want) {
			t.Fatal("the restored machine's snapshot differs from the one it was restored from")
		}
	}
	var st fsm.Stats
	f.read(func(m *fsm.Machine) { st = m.Stats() })
	if st.Leases == 0 || st.Sessions == 0 || st.Keys == 0 {
		t.Errorf("stats %+v: the workload should hold keys, leases and sessions", st)
	}
}

// TestMachineFSMTracksTheCommittedConfiguration: the adapter knows the
// latest committed configuration and its index, from the configuration
// entries it applies and from the snapshot it restores; raft's own
// GetConfiguration().Index() is always 0 (v1.7.3), and a check against it
// let a replayed removal notice through.
func TestMachineFSMTracksTheCommittedConfiguration(t *testing.T) {
	f := newMachineFSM(newActivity(nil), nil)
	if _, index := f.configuration(); index != 0 {
		t.Fatalf("index %d before any configuration; want 0", index)
	}
	three := raft.Configuration{Servers: []raft.Server{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}}
	two := raft.Configuration{Servers: []raft.Server{{ID: "n1"}, {ID: "n2"}}}
	f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(three)},
		commandLog(t, 2, time.Second, &fsm.SetLimit{Key: "k", Limit: fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 1, Period: time.Second}}),
		{Index: 3, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(two)},
	})
	if c, index := f.configuration(); index != 3 || len(c.Servers) != 2 {
		t.Fatalf("configuration %v at %d; want n1, n2 at 3", c.Servers, index)
	}

	var sink memorySink
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := newMachineFSM(newActivity(nil), nil)
	g.snapConfig = func() (raft.Configuration, uint64, bool) { return three, 7, true }
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if c, index := g.configuration(); index != 7 || len(c.Servers) != 3 {
		t.Fatalf("restored configuration %v at %d; want the snapshot's, 3 servers at 7", c.Servers, index)
	}
}
