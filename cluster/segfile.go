package cluster

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/types"
)

// segmentFS is the file system the node's raft-wal writes its segment files
// through: raft-wal's own (fs.FS: preallocated segments, directory fsynced
// on delete), except that a segment open for writing is a *segmentFile,
// whose Sync is datasync (fdatasync(2) on Linux) where raft-wal's is
// fsync(2) (DESIGN.md, "fdatasync for the WAL's segments"). Its methods are
// safe for concurrent use, as fs.FS's are.
type segmentFS struct {
	*fs.FS
}

var _ types.VFS = segmentFS{}

// syncSegment is what a segmentFile's Sync calls to make the file's data
// durable: datasync. Tests replace it to count or fail the syncs.
var syncSegment = datasync

// newSegmentFS returns raft-wal's file system with segmentFile writers.
func newSegmentFS() segmentFS { return segmentFS{FS: fs.New()} }

// Create creates and preallocates the segment file dir/name of size bytes
// as raft-wal does, and returns it as a *segmentFile whose first Sync also
// fsyncs dir (the new file's directory entry).
func (s segmentFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	wf, err := s.FS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	f, ok := wf.(*fs.File)
	if !ok {
		_ = wf.Close()
		return nil, fmt.Errorf("create segment %s: raft-wal's file system returned a %T, not an *fs.File", name, wf)
	}
	return &segmentFile{File: &f.File, dir: dir}, nil
}

// OpenWriter opens the existing segment file dir/name for reading and
// writing (raft-wal reopens its tail segment so after a restart) as a
// *segmentFile. Its first Sync fsyncs dir as well: raft-wal's own writer
// does not, but the file may have been created by a process that crashed
// before its directory entry was durable.
func (s segmentFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	wf, err := s.FS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	f, ok := wf.(*os.File)
	if !ok {
		_ = wf.Close()
		return nil, fmt.Errorf("open segment %s: raft-wal's file system returned a %T, not an *os.File", name, wf)
	}
	return &segmentFile{File: f, dir: dir}, nil
}

// segmentFile is a segment file open for writing. raft-wal calls Sync once
// per append, from the goroutine that appends (raft's log writer), after
// its WriteAt; reads (ReadAt) may run concurrently with both, as on an
// *os.File.
type segmentFile struct {
	*os.File
	// dir, if not empty, is fsynced once, after the first Sync of the
	// file that succeeds; dirSynced records that it was.
	dir       string
	dirSynced atomic.Bool
}

// Sync makes what was written to the file durable with datasync, and on the
// first call that succeeds, the file's directory entry with an fsync of
// dir. It reports the first error; a Sync that failed on dir tries dir
// again next time.
func (f *segmentFile) Sync() error {
	if err := syncSegment(f.File); err != nil {
		return err
	}
	if f.dir == "" || f.dirSynced.Load() {
		return nil
	}
	if err := syncDir(f.dir); err != nil {
		return err
	}
	f.dirSynced.Store(true)
	return nil
}
