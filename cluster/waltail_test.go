package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// TestSealedSegmentHasNoIndexBlock: regression for raft-wal v0.4.0
// (hashicorp/raft-wal#31, fixed in v0.4.1). A follower that clears a
// conflicting suffix of its log (raft's DeleteRange of the tail, after a
// new leader overwrote entries it never committed) marked the tail segment
// sealed without writing its index block; the node then could not read its
// own log when it started again ("sealed segment has no index block"), and
// stayed down: 7 of 13 chaos runs lost a node so after kill -9.
func TestSealedSegmentHasNoIndexBlock(t *testing.T) {
	dir, path, w := newTestWAL(t)
	store := func(w *walLog, first, last, term uint64) {
		t.Helper()
		var logs []*raft.Log
		for i := first; i <= last; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: fmt.Appendf(nil, "entry %d term %d", i, term)})
		}
		if err := w.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	store(w, 1, 10, 1)
	// A new leader of term 2 had only up to 7: raft clears 8..10 and
	// stores the leader's 8..12.
	if err := w.DeleteRange(8, 10); err != nil {
		t.Fatal(err)
	}
	store(w, 8, 12, 2)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w, err := openWAL(dir, path, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("reopen after a tail truncation: %v", err)
	}
	defer w.Close()
	for i := uint64(1); i <= 12; i++ {
		var l raft.Log
		if err := w.GetLog(i, &l); err != nil {
			t.Fatalf("read entry %d after a tail truncation and a restart: %v", i, err)
		}
		want := uint64(1)
		if i >= 8 {
			want = 2
		}
		if l.Term != want {
			t.Errorf("entry %d has term %d, want %d", i, l.Term, want)
		}
	}
	// And it goes on: one more entry after the restart.
	store(w, 13, 13, 2)
}

// newTestWAL opens the node's WAL (openWAL) in a new data directory dir,
// at path.
func newTestWAL(t *testing.T) (dir, path string, w *walLog) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, walDir)
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(dir, path, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return dir, path, w
}
