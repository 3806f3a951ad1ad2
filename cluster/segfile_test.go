package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// countSegmentSyncs replaces syncSegment for the test with one that records
// the name of every file synced and then returns fail(name), or syncs the
// file with datasync when fail is nil.
func countSegmentSyncs(t *testing.T, fail func(name string) error) func() []string {
	t.Helper()
	var mu sync.Mutex
	var names []string
	prev := syncSegment
	syncSegment = func(f *os.File) error {
		mu.Lock()
		names = append(names, f.Name())
		mu.Unlock()
		if fail != nil {
			return fail(f.Name())
		}
		return datasync(f)
	}
	t.Cleanup(func() { syncSegment = prev })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), names...)
	}
}

// storeEntries appends the command entries first to last of term 1 to w.
func storeEntries(w *walLog, first, last uint64) error {
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: fmt.Appendf(nil, "entry %d", i)})
	}
	return w.StoreLogs(logs)
}

// TestWALSegmentsSyncThroughSegmentFile: the node's WAL (openWAL) writes
// its segments through segmentFS, so every append is made durable by
// syncSegment (datasync), on a new segment and on the tail segment
// reopened after a restart.
func TestWALSegmentsSyncThroughSegmentFile(t *testing.T) {
	synced := countSegmentSyncs(t, nil)
	dir, path, w := newTestWAL(t)
	for i := uint64(1); i <= 3; i++ {
		if err := storeEntries(w, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(synced()); n < 3 {
		t.Fatalf("3 appends to a new segment made %d segment syncs, want at least 3", n)
	}

	// Reopened: raft-wal recovers the tail segment with OpenWriter.
	before := len(synced())
	w, err := openWAL(dir, path, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := storeEntries(w, 4, 5); err != nil {
		t.Fatal(err)
	}
	names := synced()
	if len(names) == before {
		t.Fatal("an append to the reopened tail segment made no segment sync")
	}
	for _, name := range names {
		if filepath.Dir(name) != path || !strings.HasSuffix(name, ".wal") {
			t.Errorf("synced %s, want a segment file (*.wal) in %s", name, path)
		}
	}
	var l raft.Log
	if err := w.GetLog(5, &l); err != nil {
		t.Fatal(err)
	}
}

// TestWALSegmentSyncErrorFailsTheAppend: an error from the segment's sync
// fails the append that needed it, and the entry is not in the log.
func TestWALSegmentSyncErrorFailsTheAppend(t *testing.T) {
	errDisk := errors.New("disk failed")
	var failing bool
	countSegmentSyncs(t, func(name string) error {
		if failing {
			return errDisk
		}
		return nil
	})
	_, _, w := newTestWAL(t)
	defer w.Close()
	if err := storeEntries(w, 1, 1); err != nil {
		t.Fatal(err)
	}
	failing = true
	if err := storeEntries(w, 2, 2); !errors.Is(err, errDisk) {
		t.Fatalf("append with a failing sync: %v, want %v", err, errDisk)
	}
	if last, err := w.LastIndex(); err != nil || last != 1 {
		t.Fatalf("after a failed append LastIndex = %d, %v; want 1", last, err)
	}
}

// TestSegmentFileSync: Sync syncs the file, reports the error of datasync
// itself (a pipe cannot be synced), and fsyncs the directory on the first
// Sync that succeeds, trying again after it failed.
func TestSegmentFileSync(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "seg.wal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("entry"); err != nil {
		t.Fatal(err)
	}
	sf := &segmentFile{File: f, dir: dir}
	if err := sf.Sync(); err != nil {
		t.Fatal(err)
	}
	if !sf.dirSynced.Load() {
		t.Error("the first Sync did not sync the file's directory")
	}

	// The directory's sync fails: reported, and tried again.
	sf = &segmentFile{File: f, dir: filepath.Join(dir, "missing")}
	for i := range 2 {
		if err := sf.Sync(); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Sync %d with a missing directory: %v, want %v", i, err, os.ErrNotExist)
		}
	}
	if sf.dirSynced.Load() {
		t.Error("a failed directory sync was recorded as done")
	}

	// datasync's own error: a pipe cannot be synced (EINVAL on Linux).
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	if err := (&segmentFile{File: pw}).Sync(); err == nil {
		t.Error("Sync of a pipe reported no error")
	}

	// A closed file.
	closed, err := os.Create(filepath.Join(dir, "closed.wal"))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if err := (&segmentFile{File: closed}).Sync(); err == nil {
		t.Error("Sync of a closed file reported no error")
	}
}
