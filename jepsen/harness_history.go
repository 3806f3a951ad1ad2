//go:build unix

package jepsen

import (
	"fmt"
	"os"
	"sync"
)

// eventFile is one process's history file: a HistoryWriter whose events are
// stamped with the reference clock (MonotonicNow) while the file's lock is
// held, so that each file is in time order. Writes are buffered; call flush
// to push them to the file (a worker does every second) and close at the
// end. It is safe for concurrent use.
type eventFile struct {
	process string
	file    string
	mu      struct {
		sync.Mutex
		w      *HistoryWriter
		nextID uint64
		err    error // the first write error; later records are dropped
	}
}

// createEventFile creates (or truncates) path for process's events.
func createEventFile(path, process string) (*eventFile, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	h := &eventFile{process: process, file: path}
	h.mu.w = NewHistoryWriter(f)
	return h, nil
}

// path returns the file's path.
func (h *eventFile) path() string { return h.file }

// newID returns an id to pair an invoke with its completion.
func (h *eventFile) newID() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.nextID++
	return h.mu.nextID
}

// record stamps e with the reference clock and the file's process, writes
// it, and returns it as written.
func (h *eventFile) record(e Event) Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.Time = MonotonicNow()
	e.Process = h.process
	if h.mu.err == nil {
		h.mu.err = h.mu.w.Write(e)
	}
	return e
}

// flush writes buffered events to the file.
func (h *eventFile) flush() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.err == nil {
		h.mu.err = h.mu.w.Flush()
	}
	return h.mu.err
}

// close flushes and closes the file, and returns the first error seen.
// Events recorded after close are dropped.
func (h *eventFile) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.err == ErrWriterClosed {
		return nil
	}
	err := h.mu.w.Close()
	if h.mu.err != nil {
		err = h.mu.err
	}
	h.mu.err = ErrWriterClosed
	if err != nil {
		return fmt.Errorf("history of %s: %w", h.process, err)
	}
	return nil
}
