package cluster

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
)

// machineFSM adapts an *fsm.Machine to raft.BatchingFSM. Raft calls
// ApplyBatch, Snapshot and Restore from its one FSM goroutine; the mutex
// orders them against the node's reads (read). It is safe for concurrent use.
type machineFSM struct {
	mu struct {
		sync.Mutex
		m *fsm.Machine
	}
}

var _ raft.BatchingFSM = (*machineFSM)(nil)

func newMachineFSM() *machineFSM {
	f := &machineFSM{}
	f.mu.m = fsm.New()
	return f
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
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.m.Apply(l.Data)
}

// ApplyBatch applies the entries raft committed together (up to its
// MaxAppendEntries) under one lock acquisition, and returns each entry's
// Apply response in order: []fsm.Result for a LogCommand, nil for the
// configuration entries raft also passes. Raft calls it instead of Apply.
func (f *machineFSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			out[i] = f.mu.m.Apply(l.Data)
		}
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
	f.mu.Lock()
	defer f.mu.Unlock()
	return &captureSnapshot{c: f.mu.m.Capture()}, nil
}

// Restore replaces the machine with the one in rc. The new machine is read
// without the lock and swapped in only if the whole snapshot is good.
func (f *machineFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m := fsm.New()
	if err := m.Restore(rc); err != nil {
		return err
	}
	f.mu.Lock()
	f.mu.m = m
	f.mu.Unlock()
	return nil
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
	c *fsm.Capture
}

// Persist encodes the capture straight into sink (through fsm's 64 KiB
// buffer, never the whole snapshot in memory) and closes it, or cancels it on
// error.
func (s *captureSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.c.WriteTo(sink); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: close sink: %w", err)
	}
	return nil
}

// Release drops the capture, so that the state only it kept alive (the
// copied arrays, and records the machine has since replaced) can be freed.
func (s *captureSnapshot) Release() { s.c.Release() }
