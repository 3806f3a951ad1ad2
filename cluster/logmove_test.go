package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// downgrade turns cfg's data directory into one of a version that kept the
// Raft log in raft.db: the WAL's entries copied into raft.db, the WAL
// directory and the stable store's keyLogInWAL removed. It returns the
// log's bounds.
func downgrade(t *testing.T, cfg Config) (first, last uint64) {
	t.Helper()
	store, _, err := openStore(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	w, err := openWAL(cfg.Dir, filepath.Join(cfg.Dir, walDir), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	if first, err = w.FirstIndex(); err == nil {
		last, err = w.LastIndex()
	}
	if err == nil && last > 0 {
		err = copyLog(store, w, first, last)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = store.SetUint64(keyLogInWAL, 0)
	}
	if err == nil {
		err = os.RemoveAll(filepath.Join(cfg.Dir, walDir))
	}
	if err != nil {
		t.Fatal(err)
	}
	if last == 0 {
		t.Fatal("the log is empty: nothing to move")
	}
	return first, last
}

// wantMoved opens cfg's node and checks that it started with its state (the
// limits oneNodeDir set), its log in the WAL ending at last or later, and
// no entry left in raft.db.
func wantMoved(t *testing.T, cfg Config, last uint64) {
	t.Helper()
	n, err := openAgain(t, cfg)
	if err != nil {
		t.Fatalf("open after the move: %v", err)
	}
	// The entries past the snapshot apply once the node leads again.
	waitFor(t, opWait, "the limits set before the move", func() bool {
		for i := range 8 {
			if _, ok := n.lookup("k" + string(rune('a'+i))); !ok {
				return false
			}
		}
		return true
	})
	if got := n.raft.LastIndex(); got < last {
		t.Errorf("log ends at %d after the move; want %d or later", got, last)
	}
	if l, _ := n.store.LastIndex(); l != 0 {
		t.Errorf("raft.db still holds log entries up to %d after the move", l)
	}
	if v, _ := n.store.GetUint64(keyLogInWAL); v == 0 {
		t.Errorf("raft.db does not record that the log is in the WAL")
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, walDir+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.tmp left after the move: %v", walDir, err)
	}
}

// TestOldRaftDBStartsWithItsState: a data directory of a version that kept
// the log in raft.db starts, moves its log into the WAL and keeps its state,
// with and without a snapshot (a log that starts past 1).
func TestOldRaftDBStartsWithItsState(t *testing.T) {
	for _, compact := range []bool{false, true} {
		cfg := oneNodeDir(t, compact)
		first, last := downgrade(t, cfg)
		if compact && first <= 1 {
			t.Fatalf("compacted log starts at %d", first)
		}
		wantMoved(t, cfg, last)
	}
}

// TestLogMoveCrashAtEachStep: a move of the log out of raft.db stopped at
// any of its steps (as by a crash: the files stay as they are) completes on
// the next start, with the node's state whole.
func TestLogMoveCrashAtEachStep(t *testing.T) {
	t.Cleanup(func() { moveStep, copyChunk = nil, 64 })
	for _, at := range []string{"copying", "copied", "renamed"} {
		t.Run(at, func(t *testing.T) {
			cfg := oneNodeDir(t, false)
			_, last := downgrade(t, cfg)
			crash := errors.New("crash at " + at)
			copyChunk = 2 // "copying" stops after the first 2 of several entries
			moveStep = func(step string) error {
				if step == at {
					return crash
				}
				return nil
			}
			if _, err := openAgain(t, cfg); !errors.Is(err, crash) {
				t.Fatalf("open with a crash at %q: %v; want the crash", at, err)
			}
			moveStep, copyChunk = nil, 64
			wantMoved(t, cfg, last)
		})
	}
}

// TestDeletedWALRefusesToStart: a node whose WAL directory was deleted
// would start with its term and vote but an empty log, having lost entries
// it acknowledged. raft.db records that the log lives in the WAL: Open
// refuses, as for a lost raft.db.
func TestDeletedWALRefusesToStart(t *testing.T) {
	cfg := oneNodeDir(t, false)
	path := filepath.Join(cfg.Dir, walDir)
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	_, err := openAgain(t, cfg)
	wantStateError(t, err, ErrStateLost, path, "is missing", "--replace")
}
