package cluster

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/fsm"
)

// machineFSM adapts an *fsm.Machine to raft.BatchingFSM. Raft calls
// ApplyBatch, Snapshot and Restore from its one FSM goroutine; the mutex
// orders them against the node's reads (read). It is safe for concurrent use.
type machineFSM struct {
	activity *activity    // counts what applied, outside the machine; nil: nothing (benchmarks' baseline)
	metrics  *nodeMetrics // nil: none

	mu struct {
		sync.Mutex
		m *fsm.Machine
	}

	// keys and sessions are the machine's counts after the last batch
	// applied (or snapshot restored), so that the leader's admission
	// (caps.go) reads them without the lock.
	keys, sessions atomic.Int64

	// snapConfig returns the configuration and its index in the snapshot
	// Restore restores (the snapshot store's newest: raft writes a
	// received snapshot to the store, and restores the newest at start,
	// before it restores the machine); nil: none known.
	snapConfig func() (raft.Configuration, uint64, bool)

	// cfg is the latest committed Raft configuration and its index, as
	// applied here. raft.GetConfiguration gives the latest configuration,
	// committed or not, and no index: raft v1.7.3's Index() is always 0.
	cfg struct {
		sync.Mutex
		c     raft.Configuration
		index uint64
	}
}

var _ raft.BatchingFSM = (*machineFSM)(nil)

func newMachineFSM(a *activity, m *nodeMetrics) *machineFSM {
	f := &machineFSM{activity: a, metrics: m}
	f.mu.m = f.newMachine()
	return f
}

// newMachine returns an empty machine that tells f.activity what it
// applies.
func (f *machineFSM) newMachine() *fsm.Machine {
	m := fsm.New()
	if f.activity != nil {
		m.SetObserver(f.activity.observer())
	}
	return m
}

// Apply applies a LogCommand entry and returns its []fsm.Result, which the
// leader's ApplyFuture.Response hands to the waiting request. Other entry
// types carry nothing for the machine and return nil.
//
// fsm.Machine.Apply panics on an entry it cannot decode; the panic is left to
// stop the process, as a replica that cannot read its log must stop rather
// than diverge.
func (f *machineFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies the entries raft committed together (up to its
// MaxAppendEntries) under one lock acquisition, and returns each entry's
// Apply response in order: []fsm.Result for a LogCommand, nil for the
// configuration entries raft also passes. Raft calls it instead of Apply.
//
// The machine tells f.activity each command as it applies it; the batch's
// counts go to the metrics, and its keys to activity.run, at its end.
func (f *machineFSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	start := time.Now()
	commands := 0
	if f.activity != nil {
		defer f.activity.end()
	}
	f.mu.Lock()
	for i, l := range logs {
		switch l.Type {
		case raft.LogCommand:
			r := f.mu.m.Apply(l.Data)
			out[i] = r
			commands += len(r)
		case raft.LogConfiguration:
			f.setConfiguration(raft.DecodeConfiguration(l.Data), l.Index)
		}
	}
	f.countLocked()
	f.mu.Unlock()
	if m := f.metrics; m != nil {
		m.applySeconds.Observe(time.Since(start).Seconds())
		m.applyCommands.Observe(float64(commands))
	}
	return out
}

// Snapshot captures the machine (fsm.Machine.Capture): under the lock it
// copies only the flat arrays the state lives in, about 32 bytes a key, and
// leaves the encoding to Persist, which runs without the lock while Apply goes
// on. Raft calls Snapshot on the goroutine that applies entries, so this is
// the whole time a snapshot holds up writes: ~3 ms at 1M keys where encoding
// under the lock took ~90 (BenchmarkSnapshotStall, DESIGN.md "Snapshots").
func (f *machineFSM) Snapshot() (raft.FSMSnapshot, error) {
	start := time.Now()
	f.mu.Lock()
	c := f.mu.m.Capture()
	f.mu.Unlock()
	f.metrics.observe(func(m *nodeMetrics) prometheus.Histogram { return m.snapCapture }, time.Since(start))
	return &captureSnapshot{c: c, metrics: f.metrics}, nil
}

// Restore replaces the machine with the one in rc. The new machine is read
// without the lock and swapped in only if the whole snapshot is good.
func (f *machineFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	start := time.Now()
	m := fsm.New()
	if err := m.Restore(rc); err != nil {
		return err
	}
	if f.activity != nil {
		m.SetObserver(f.activity.observer())
	}
	f.metrics.observe(func(m *nodeMetrics) prometheus.Histogram { return m.snapRestore }, time.Since(start))
	f.mu.Lock()
	f.mu.m = m
	f.countLocked()
	f.mu.Unlock()
	if f.snapConfig != nil {
		if c, index, ok := f.snapConfig(); ok {
			f.setConfiguration(c, index)
		}
	}
	return nil
}

// countLocked publishes the machine's counts of keys and sessions.
func (f *machineFSM) countLocked() {
	st := f.mu.m.Stats()
	f.keys.Store(int64(st.Keys))
	f.sessions.Store(int64(st.Sessions))
}

// setConfiguration records c, committed at index.
func (f *machineFSM) setConfiguration(c raft.Configuration, index uint64) {
	f.cfg.Lock()
	f.cfg.c, f.cfg.index = c, index
	f.cfg.Unlock()
}

// configuration returns the latest committed configuration applied here
// and its index; index 0 if none is known yet (a node that restarted knows
// its snapshot's once raft restored it, and the ones after once they are
// applied again).
func (f *machineFSM) configuration() (raft.Configuration, uint64) {
	f.cfg.Lock()
	defer f.cfg.Unlock()
	return f.cfg.c.Clone(), f.cfg.index
}

// read runs fn with the machine under the lock. fn must only read.
func (f *machineFSM) read(fn func(m *fsm.Machine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.mu.m)
}

// now returns the machine's log time.
func (f *machineFSM) now() int64 {
	var t int64
	f.read(func(m *fsm.Machine) { t = m.Now() })
	return t
}

// captureSnapshot is a captured machine waiting to be persisted. Raft calls
// Persist, then Release, from one goroutine, concurrently with Apply; it is
// not for concurrent use itself.
type captureSnapshot struct {
	c       *fsm.Capture
	metrics *nodeMetrics // nil: none
}

// Persist encodes the capture straight into sink (through fsm's 64 KiB
// buffer, never the whole snapshot in memory) and closes it, or cancels it on
// error.
func (s *captureSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	n, err := s.c.WriteTo(sink)
	if err != nil {
		err = errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	} else if err = sink.Close(); err != nil {
		err = fmt.Errorf("persist snapshot: close sink: %w", err)
	}
	if m := s.metrics; m != nil {
		if err != nil {
			m.diskSnapError.Inc()
		} else {
			m.snapPersist.Observe(time.Since(start).Seconds())
			m.snapBytes.Set(float64(n))
		}
	}
	return err
}

// Release drops the capture, so that the state only it kept alive (the
// copied arrays, and records the machine has since replaced) can be freed.
func (s *captureSnapshot) Release() { s.c.Release() }
