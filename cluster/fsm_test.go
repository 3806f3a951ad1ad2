package cluster

import (
	"bytes"
	"io"
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
	f := newMachineFSM()
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

	g := newMachineFSM()
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
