package cluster

import (
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// logCacheEntries is how many of the newest log entries the node keeps in
// memory, in front of its log store, for the leader's replication to read back
// instead of reading and decoding them from disk: MaxAppendEntries (raft's
// 64), one AppendEntries of the newest entries. An entry holds at most
// maxBatchCommands commands and maxBatchBytes, tens of KiB typically, so the
// cache holds a few MiB, 64 MiB at worst.
const logCacheEntries = 64

// logStore is the LogStore raft writes through: raft's LogCache in front of
// the node's log store, which tells the batcher when a write of the
// leader's ends (written), so that the next batch is sealed when the disk is
// free for it (DESIGN.md, "The write path: group commit").
type logStore struct {
	raft.LogStore
	log       io.Closer // the store under the cache, closed by Close; nil: none
	monotonic bool
	// written, once set, is called after every successful write with the
	// number of command entries it held.
	written atomic.Pointer[func(commands int)]
	// newTerm, once set, is called after a write whose last entry has a
	// higher term than any written before by this process: a new leader's
	// first entry reached this node (membership gossips its stats then).
	newTerm atomic.Pointer[func()]
	term    atomic.Uint64 // the highest term written; raft writes from one goroutine
}

// newLogStore puts a cache in front of store. Close closes closer, if it is
// not nil (the store, when the logStore owns it).
func newLogStore(store raft.LogStore, closer io.Closer) (*logStore, error) {
	cache, err := raft.NewLogCache(logCacheEntries, store)
	if err != nil {
		return nil, err
	}
	return &logStore{LogStore: cache, log: closer, monotonic: cache.IsMonotonic()}, nil
}

// IsMonotonic tells raft whether the log must stay contiguous
// (raft.MonotonicLogStore), as the store under the cache does: raft then
// empties it after installing a snapshot rather than leave a gap.
func (s *logStore) IsMonotonic() bool { return s.monotonic }

// Close closes the store under the cache, if the logStore owns it.
func (s *logStore) Close() error {
	if s.log == nil {
		return nil
	}
	return s.log.Close()
}

// StoreLog stores one entry.
func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores entries and, once they are durable, reports their command
// entries to written and a new term to newTerm.
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	if err := s.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	if f := s.written.Load(); f != nil {
		n := 0
		for _, l := range logs {
			if l.Type == raft.LogCommand {
				n++
			}
		}
		(*f)(n)
	}
	if len(logs) > 0 {
		s.wroteTerm(logs[len(logs)-1].Term)
	}
	return nil
}

// wroteTerm calls newTerm if term is above every term written before.
func (s *logStore) wroteTerm(term uint64) {
	if term <= s.term.Load() {
		return
	}
	s.term.Store(term)
	if f := s.newTerm.Load(); f != nil {
		(*f)()
	}
}
