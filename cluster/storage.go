package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Files and directories under Config.Dir.
const (
	// storeFile is the bbolt file holding the stable store: the term and
	// vote. Nodes of earlier versions kept the log there too; Open moves it
	// to walDir.
	storeFile = "raft.db"
	// walDir holds the Raft log: hashicorp/raft-wal's segment files and
	// its bbolt index of them (DESIGN.md, "The log: a WAL, one fsync per
	// write").
	walDir = "wal"
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
	// gateFile is written when a node starts fresh behind its vote gate
	// (a replacement, or a node that joins), and removed once the gate
	// opens: a node that stops before then, with some Raft state by now,
	// starts behind the gate again rather than vote with a log it has
	// only partly caught up.
	gateFile = "vote-gated"
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
// used as it is. Open writes no Raft state before it returns one, and what
// it made in a directory without raft.db (its stores, the directory
// itself) it removes again (made). Its message is one line: the
// path at fault, what is wrong, and what the operator can do.
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
	return fmt.Sprintf("remove the data directory %s and start the node again as a fresh replacement "+
		"(serve --replace) once the cluster has a leader; %s", dir, noOldCopy)
}

// noOldCopy says why a remedy never restores an older copy of a node's
// data directory: the node would resume with a term, a vote and a log it
// has since moved past, and could vote twice in a term or help elect a
// leader that lacks entries it acknowledged (DESIGN.md, "Storage and
// start-up").
const noOldCopy = "do not restore an older copy of the directory: the node would have forgotten votes it cast " +
	"and entries it acknowledged since"

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
func readDiskState(dir string, store *raftboltdb.BoltStore, logs raft.LogStore, snaps raft.SnapshotStore) (diskState, error) {
	var s diskState
	err := guard(func() error {
		var err error
		s.term, err = store.GetUint64(keyCurrentTerm)
		if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
			return fmt.Errorf("read the current term: %w", err)
		}
		if s.first, err = logs.FirstIndex(); err != nil {
			return fmt.Errorf("read the log's first index: %w", err)
		}
		if s.last, err = logs.LastIndex(); err != nil {
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
			"(was the snapshot directory deleted?)", walDir, s.first, have, snapIndex+1, s.first-1),
		Remedy: remedyCorrupt(dir)}
}

// writeMarker writes markerFile under dir, durably, if it is missing.
func writeMarker(dir, id string) error {
	return writeDurable(dir, markerFile, fmt.Sprintf("Raft state of leasehold node %q lives in this directory.\n"+
		"If raft.db is lost while this file remains, the node refuses to start.\n", id))
}

// writeGateFile writes gateFile under dir, durably.
func writeGateFile(dir string) error {
	return writeDurable(dir, gateFile, "This node started fresh and grants no vote until it has caught up.\n"+
		"It stopped before then if this file remains: it starts behind its vote gate again.\n")
}

// removeGateFile removes gateFile from dir, durably: the node's vote gate
// opened for good.
func removeGateFile(dir string) error {
	if err := os.Remove(filepath.Join(dir, gateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(dir)
}

// hasGateFile reports whether dir holds gateFile.
func hasGateFile(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, gateFile))
	return err == nil
}

// writeDurable writes content to dir/name through a temporary file, a
// rename and an fsync of dir.
func writeDurable(dir, name, content string) error {
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
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
		return fmt.Errorf("write %s: %w", name, err)
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

// keyLogInWAL is the stable store's key (in raft.db) saying that the
// node's log lives in walDir: set by markLogInWAL once the node has
// accepted its directory's state, so that a WAL directory lost later is
// refused rather than started empty.
var keyLogInWAL = []byte("LeaseholdLogInWAL")

// markLogInWAL sets keyLogInWAL in stable, if it is not set yet.
func markLogInWAL(stable *raftboltdb.BoltStore) error {
	if v, err := stable.GetUint64(keyLogInWAL); err == nil && v != 0 {
		return nil
	}
	if err := stable.SetUint64(keyLogInWAL, 1); err != nil {
		return fmt.Errorf("record in %s that the log is in %s: %w", storeFile, walDir, err)
	}
	return nil
}

// moveStep, if not nil, is called at each step of moving the log out of
// raft.db ("copying" after each chunk, "copied", "renamed"); an
// error stops the move there, as a crash would. Tests set it.
var moveStep func(step string) error

// copyChunk is how many entries copyLog reads and writes at a time.
var copyChunk = 64

// openLog opens the node's Raft log under dir/walDir: hashicorp/raft-wal,
// which writes each append with one fsync where bbolt takes two (DESIGN.md,
// "The log: a WAL, one fsync per write"). A data directory of an earlier
// version keeps its log in raft.db (stable); openLog moves it, once:
//
//  1. copy every entry into a new WAL under walDir+".tmp", and close it
//     (each write fsynced);
//  2. rename it to walDir and fsync dir: from here on the log is the WAL;
//  3. delete the entries from raft.db.
//
// A crash before 2 leaves raft.db whole and a stale .tmp, which the next
// start removes and copies again; a crash after 2 leaves entries in raft.db
// that the WAL also holds, which the next start deletes. Nothing else is
// written before the node has checked its directory's state (prepareState);
// then markLogInWAL records in raft.db that the log is in the WAL. A
// directory whose raft.db has that key but no walDir lost its log: refused
// with ErrStateLost. Its errors are *StateError where the
// directory's state is at fault; poisoned reports that bbolt panicked (see
// guard).
func openLog(dir string, stable *raftboltdb.BoltStore, logger hclog.Logger, log *slog.Logger) (_ *walLog, poisoned bool, err error) {
	path := filepath.Join(dir, walDir)
	var first, last, inWAL uint64
	err = guard(func() error {
		var err error
		if inWAL, err = stable.GetUint64(keyLogInWAL); err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
			return err
		}
		if first, err = stable.FirstIndex(); err != nil {
			return err
		}
		last, err = stable.LastIndex()
		return err
	})
	if p := (panicked{}); errors.As(err, &p) {
		return nil, true, &StateError{Kind: ErrCorruptState, Path: filepath.Join(dir, storeFile),
			Problem: "is corrupt: bbolt cannot read it (" + p.Error() + ")", Remedy: remedyCorrupt(dir)}
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the log's bounds in %s: %w", storeFile, err)
	}
	// finish deletes the entries raft.db still holds: the WAL w holds them.
	finish := func(w *walLog) (*walLog, bool, error) {
		if last > 0 {
			if err := stable.DeleteRange(first, last); err != nil {
				w.Close()
				return nil, false, fmt.Errorf("delete the log moved from %s: %w", storeFile, err)
			}
			log.Info("deleted the Raft log moved from raft.db to the WAL", "first", first, "last", last)
		}
		return w, false, nil
	}
	_, err = os.Stat(path)
	switch {
	case err == nil:
		w, err := openWAL(dir, path, logger)
		if err != nil {
			return nil, false, err
		}
		return finish(w)
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("open the Raft log: %w", err)
	case inWAL != 0:
		return nil, false, &StateError{Kind: ErrStateLost, Path: path,
			Problem: "is missing, but raft.db says the node's Raft log was there: the log was deleted, and resuming " +
				"without it could lose entries this node acknowledged",
			Remedy: "remove the data directory " + dir + " and start the node as a fresh replacement " +
				"(serve --replace) once the cluster has a leader; " + noOldCopy}
	case last == 0:
		if err := os.Mkdir(path, 0o750); err != nil {
			return nil, false, fmt.Errorf("create the Raft log: %w", err)
		}
		if err := syncDir(dir); err != nil {
			return nil, false, fmt.Errorf("create the Raft log: %w", err)
		}
		w, err := openWAL(dir, path, logger)
		if err != nil {
			return nil, false, err
		}
		return finish(w)
	}

	// Move the log out of raft.db.
	tmp := path + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, false, fmt.Errorf("remove an unfinished move of the Raft log: %w", err)
	}
	if err := os.Mkdir(tmp, 0o750); err != nil {
		return nil, false, fmt.Errorf("move the Raft log: %w", err)
	}
	w, err := openWAL(dir, tmp, logger)
	if err != nil {
		return nil, false, err
	}
	err = copyLog(w, stable, first, last)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = step("copied")
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err == nil {
		err = step("renamed")
	}
	if err != nil {
		return nil, false, fmt.Errorf("move the Raft log from %s: %w", storeFile, err)
	}
	log.Info("moved the Raft log from raft.db to the WAL", "first", first, "last", last, "dir", path)
	if w, err = openWAL(dir, path, logger); err != nil {
		return nil, false, err
	}
	return finish(w)
}

// step calls moveStep, if set.
func step(name string) error {
	if moveStep == nil {
		return nil
	}
	return moveStep(name)
}

// copyLog appends the entries first to last of from to to, a few at a time.
func copyLog(to raft.LogStore, from raft.LogStore, first, last uint64) error {
	chunk := copyChunk
	logs := make([]*raft.Log, 0, chunk)
	for i := first; i <= last; i++ {
		l := new(raft.Log)
		if err := from.GetLog(i, l); err != nil {
			return fmt.Errorf("read entry %d: %w", i, err)
		}
		logs = append(logs, l)
		if len(logs) == chunk || i == last {
			if err := to.StoreLogs(logs); err != nil {
				return fmt.Errorf("write entries %d to %d: %w", logs[0].Index, i, err)
			}
			logs = logs[:0]
			if err := step("copying"); err != nil {
				return err
			}
		}
	}
	return nil
}

// walLog is a raft-wal WAL with the metadata store it owns: raft-wal's
// Close (v0.4.2) leaves its bbolt meta.db open (and locked), so a node
// reopening the directory in the same process would block on its lock.
type walLog struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

// Close closes the WAL, then its metadata store.
func (w *walLog) Close() error {
	return errors.Join(w.WAL.Close(), w.meta.Close())
}

// openWAL opens the WAL in path, a directory of dir. An error is a
// *StateError: the WAL cannot be read.
func openWAL(dir, path string, logger hclog.Logger) (*walLog, error) {
	w := &walLog{meta: &metadb.BoltMetaDB{}}
	err := guard(func() error {
		var err error
		w.WAL, err = wal.Open(path, wal.WithLogger(logger), wal.WithMetaStore(w.meta),
			wal.WithSegmentFiler(segment.NewFiler(path, newSegmentFS())))
		return err
	})
	if err != nil {
		_ = w.meta.Close()
		return nil, &StateError{Kind: ErrCorruptState, Path: path,
			Problem: "holds a Raft log that cannot be read (" + err.Error() + ")", Remedy: remedyCorrupt(dir)}
	}
	return w, nil
}

// raftStable is the StableStore raft runs on: the node's bbolt store, except
// that once the node is closing (closeWrites), writes are dropped instead of
// failed. After raft.Shutdown one path can still write: a heartbeat handled
// on a transport goroutine (raft's fast path) that passed raft's shutdown
// check just before Shutdown and carries a newer term; raft panics when that
// write fails ("failed to save current term: database not open", seen in
// the cluster tests under -race). No vote is cast on that path (votes are
// the main loop's, which Shutdown has stopped) and no entry is stored, so
// dropping the term loses nothing: the node learns it again from the leader
// when it starts next.
type raftStable struct {
	raft.StableStore
	mu     sync.RWMutex
	closed bool
}

func (s *raftStable) Set(key, val []byte) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	return s.StableStore.Set(key, val)
}

func (s *raftStable) SetUint64(key []byte, val uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	return s.StableStore.SetUint64(key, val)
}

// closeWrites makes every later write a no-op, and waits for one under way.
func (s *raftStable) closeWrites() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// made is what Open may create in a data directory that has no raft.db:
// the names under dir, and dir itself, that did not exist before it ran.
// Their stores hold nothing then until Open accepts the directory
// (prepareState): no term, no vote, no log (a log moved from raft.db needs
// a raft.db), no snapshot. So a start refused with a *StateError, which
// Open returns only before that, removes them (undo) and leaves the
// directory as it found it: a refused start that made a fresh raft.db
// changed what the next start found.
type made struct {
	dir   string
	names []string // under dir
	isDir bool     // dir itself
}

// lookMade records what Open may make in dir; nothing if dir has a
// raft.db, whose state is the node's own.
func lookMade(dir string) (made, error) {
	absent := func(path string) (bool, error) {
		_, err := os.Lstat(path)
		if errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("read the data directory: %w", err)
		}
		return false, nil
	}
	m := made{dir: dir}
	var err error
	if m.isDir, err = absent(dir); err != nil {
		return made{}, err
	}
	for _, name := range []string{storeFile, walDir, snapshotDir} {
		none, err := absent(filepath.Join(dir, name))
		switch {
		case err != nil:
			return made{}, err
		case !none && name == storeFile:
			return made{}, nil
		case none:
			m.names = append(m.names, name)
		}
	}
	return m, nil
}

// undo removes what m recorded as not there, once the stores are closed,
// and dir if it is empty then and was not there either; it logs what it
// cannot remove.
func (m made) undo(log *slog.Logger) {
	for _, name := range m.names {
		path := filepath.Join(m.dir, name)
		if err := os.RemoveAll(path); err != nil {
			log.Warn("remove what a refused start made in the data directory", "path", path, "err", err)
		}
	}
	if m.isDir {
		if err := os.Remove(m.dir); err != nil {
			log.Warn("remove the data directory a refused start made", "dir", m.dir, "err", err)
		}
	}
}
