package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Files and directories under Config.Dir.
const (
	// storeFile is the bbolt file holding the Raft log and stable store.
	storeFile = "raft.db"
	// snapshotDir is where raft's FileSnapshotStore keeps snapshots, one
	// directory each; one being written is named with tmpSnapshotSuffix
	// until it is complete.
	snapshotDir       = "snapshots"
	tmpSnapshotSuffix = ".tmp"
	// markerFile is written once this directory holds Raft state (at
	// bootstrap, or when a node first starts here with state or as a
	// fresh replacement), and never removed: a directory with the marker
	// and no state has lost it.
	markerFile = "raft.initialized"
)

// keyCurrentTerm is the stable-store key under which hashicorp/raft keeps
// its current term: part of its on-disk format, so it does not change.
var keyCurrentTerm = []byte("CurrentTerm")

// The kinds of *StateError; match them with errors.Is.
var (
	// ErrStoreLocked: another process holds raft.db's lock (a second node
	// on the same Dir?).
	ErrStoreLocked = errors.New("raft store is locked by another process")
	// ErrCorruptState: raft.db or the snapshots cannot be read, or do not
	// fit together (the log starts after the newest snapshot ends).
	ErrCorruptState = errors.New("raft state is corrupt")
	// ErrStateLost: the node has no Raft state, but it had some (its
	// marker file, snapshots or a log are left), or its peers already
	// form a cluster. Starting it would forget the term and vote it had,
	// so it could vote twice in one term.
	ErrStateLost = errors.New("raft state was lost")
)

// StateError is returned by Open when the node's data directory cannot be
// used as it is. Open changes nothing in the directory before it returns
// one. Its message is one line: the path at fault, what is wrong, and what
// the operator can do.
type StateError struct {
	Kind    error  // ErrStoreLocked, ErrCorruptState or ErrStateLost
	Path    string // the file or directory at fault
	Problem string // what is wrong
	Remedy  string // what the operator can do
}

func (e *StateError) Error() string {
	return oneLine(e.Path + ": " + e.Problem + "; " + e.Remedy)
}

// Is reports whether target is e's kind.
func (e *StateError) Is(target error) bool { return target == e.Kind }

// oneLine joins the lines of s, so an error from a third party prints on
// one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// remedyCorrupt is what an operator can do about a corrupt or incomplete
// data directory.
func remedyCorrupt(dir string) string {
	return fmt.Sprintf("restore it from a backup, or remove the data directory %s and start the node again "+
		"as a fresh replacement (Config.Replace, serve --replace) once the cluster has a leader", dir)
}

// panicked is a panic recovered from bbolt or raft while they read the
// node's files.
type panicked struct{ value any }

func (p panicked) Error() string { return fmt.Sprint(p.value) }

// guard runs f, which reads the node's files through bbolt or raft, and
// returns a panic inside it as a panicked error. Both panic on some corrupt
// files instead of returning an error: bbolt ("invalid freelist page", "Page
// expected to be: 256, but self identifies as ..."), and raft.NewRaft ("log
// not found", when the log has a gap that no snapshot covers). Only Open's
// reads of existing state run under guard: no goroutine of bbolt or raft has
// started yet. After a panic the store may hold bbolt's locks, so Open leaves
// it open (its file descriptor and lock stay until the process exits, which
// is what the serve command does next).
func guard(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = panicked{p}
		}
	}()
	return f()
}

// openStore opens raft.db under dir. Its error is a *StateError: the file
// is locked (another process holds it), or bbolt cannot read it. poisoned
// reports that bbolt panicked: the store, if any, must not be closed.
func openStore(dir string) (store *raftboltdb.BoltStore, poisoned bool, err error) {
	path := filepath.Join(dir, storeFile)
	err = guard(func() error {
		var err error
		store, err = raftboltdb.New(raftboltdb.Options{
			Path:        path,
			BoltOptions: &bbolt.Options{Timeout: storeLockTimeout},
		})
		return err
	})
	var p panicked
	switch {
	case err == nil:
		return store, false, nil
	case errors.As(err, &p):
		return nil, true, &StateError{Kind: ErrCorruptState, Path: path,
			Problem: "is corrupt: bbolt cannot read it (" + p.Error() + ")", Remedy: remedyCorrupt(dir)}
	case errors.Is(err, berrors.ErrTimeout):
		return nil, false, &StateError{Kind: ErrStoreLocked, Path: path,
			Problem: fmt.Sprintf("is locked by another process (still held after %v)", storeLockTimeout),
			Remedy:  "stop the other node using this data directory, or give this node its own"}
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, false, &StateError{Kind: ErrCorruptState, Path: path,
			Problem: "is not a readable bbolt file (" + err.Error() + "; both meta pages are damaged, or it is not a raft.db)",
			Remedy:  remedyCorrupt(dir)}
	}
	return nil, false, fmt.Errorf("open raft store %s: %w", path, err)
}

// diskState is what a node's data directory holds, read before Raft starts.
type diskState struct {
	term      uint64 // the stable store's current term; 0 if none
	first     uint64 // the log's first and last index; 0, 0 if it is empty
	last      uint64
	snapshots []*raft.SnapshotMeta // newest first
	marker    bool                 // markerFile exists
}

// hasState reports whether the directory holds Raft state to resume: a
// term. BootstrapCluster writes term 1 first, and raft persists each new
// term before it acts in it.
func (s diskState) hasState() bool { return s.term > 0 }

// leftovers names what remains of Raft state in a directory without a term,
// or "" if nothing does.
func (s diskState) leftovers() string {
	var parts []string
	if s.marker {
		parts = append(parts, "its marker file "+markerFile)
	}
	if s.last > 0 {
		parts = append(parts, fmt.Sprintf("log entries %d to %d", s.first, s.last))
	}
	switch n := len(s.snapshots); {
	case n == 1:
		parts = append(parts, "a snapshot")
	case n > 1:
		parts = append(parts, fmt.Sprintf("%d snapshots", n))
	}
	return strings.Join(parts, ", ")
}

// readDiskState reads the stable store's term, the log's bounds and the
// snapshot list. A panic in bbolt is returned as panicked.
func readDiskState(dir string, store *raftboltdb.BoltStore, snaps raft.SnapshotStore) (diskState, error) {
	var s diskState
	err := guard(func() error {
		var err error
		s.term, err = store.GetUint64(keyCurrentTerm)
		if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
			return fmt.Errorf("read the current term: %w", err)
		}
		if s.first, err = store.FirstIndex(); err != nil {
			return fmt.Errorf("read the log's first index: %w", err)
		}
		if s.last, err = store.LastIndex(); err != nil {
			return fmt.Errorf("read the log's last index: %w", err)
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	if s.snapshots, err = snaps.List(); err != nil {
		return s, &StateError{Kind: ErrCorruptState, Path: filepath.Join(dir, snapshotDir),
			Problem: "cannot be listed (" + err.Error() + ")", Remedy: remedyCorrupt(dir)}
	}
	_, err = os.Stat(filepath.Join(dir, markerFile))
	switch {
	case err == nil:
		s.marker = true
	case !errors.Is(err, os.ErrNotExist):
		return s, fmt.Errorf("read the marker file: %w", err)
	}
	return s, nil
}

// checkLogCovered checks that the log and the snapshots fit together: raft
// replays the log from just after the newest snapshot it can restore, and
// panics ("log not found") if an entry there is missing. That happens when
// the snapshot directory was deleted after the log was compacted. (raft
// falls back to older snapshots when the newest cannot be restored; their
// contents are not read here, so that case is left to guard.)
func checkLogCovered(dir string, s diskState) error {
	if s.last == 0 || s.first <= 1 {
		return nil
	}
	var snapIndex uint64
	if len(s.snapshots) > 0 {
		snapIndex = s.snapshots[0].Index
	}
	if s.first <= snapIndex+1 {
		return nil
	}
	have := "there is no snapshot"
	if len(s.snapshots) > 0 {
		have = fmt.Sprintf("the newest snapshot ends at index %d", snapIndex)
	}
	return &StateError{Kind: ErrCorruptState, Path: filepath.Join(dir, snapshotDir),
		Problem: fmt.Sprintf("is missing snapshots: the log in %s starts at index %d but %s, so entries %d to %d are gone "+
			"(was the snapshot directory deleted?)", storeFile, s.first, have, snapIndex+1, s.first-1),
		Remedy: remedyCorrupt(dir)}
}

// writeMarker writes markerFile under dir, durably, if it is missing.
func writeMarker(dir, id string) error {
	path := filepath.Join(dir, markerFile)
	tmp := path + ".tmp"
	content := fmt.Sprintf("Raft state of leasehold node %q lives in this directory.\n"+
		"If raft.db is lost while this file remains, the node refuses to start.\n", id)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write %s: %w", markerFile, err)
	}
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", markerFile, err)
	}
	return nil
}

// syncDir fsyncs a directory, so that a rename in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// removeStaleSnapshots removes the temporary directories that raft's file
// snapshot store leaves when the process dies while writing a snapshot
// (snapshots/<term>-<index>-<ms>.tmp): raft skips them but never removes
// them, so each one stays on disk for good. It logs what it removes. Call it
// only while this node holds raft.db's lock and before raft starts: no
// snapshot can be in progress then.
func removeStaleSnapshots(dir string, log *slog.Logger) error {
	base := filepath.Join(dir, snapshotDir)
	entries, err := os.ReadDir(base)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasSuffix(e.Name(), tmpSnapshotSuffix) {
			continue
		}
		path := filepath.Join(base, e.Name())
		size := dirSize(path)
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("remove a partial snapshot: %w", err)
		}
		log.Warn("removed a partial snapshot left by an interrupted snapshot", "path", path, "bytes", size)
	}
	return nil
}

// dirSize returns the bytes of the regular files under path, as far as they
// can be read.
func dirSize(path string) int64 {
	var n int64
	_ = filepath.WalkDir(path, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
