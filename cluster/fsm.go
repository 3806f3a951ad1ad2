package cluster

import (
	"bytes"
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

// Snapshot captures the machine by writing its snapshot into memory under the
// lock; Persist then copies the bytes to the sink without it. Apply waits for
// the capture (raft calls both from one goroutine), so its cost is the
// encoding time of the whole state. A copy-on-write capture is issue 5's.
func (f *machineFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf bytes.Buffer
	if err := f.mu.m.Snapshot(&buf); err != nil {
		return nil, fmt.Errorf("capture snapshot: %w", err)
	}
	return &memorySnapshot{data: buf.Bytes()}, nil
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

// memorySnapshot is a captured snapshot waiting to be persisted. Raft calls
// Persist, then Release, from one goroutine; it is not for concurrent use.
type memorySnapshot struct {
	data []byte
}

// Persist writes the snapshot to sink and closes it, or cancels it on error.
func (s *memorySnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: close sink: %w", err)
	}
	return nil
}

// Release drops the captured bytes.
func (s *memorySnapshot) Release() { s.data = nil }
