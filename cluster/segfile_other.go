//go:build !linux

package cluster

import "os"

// datasync is f.Sync (fsync(2), or F_FULLFSYNC on macOS) where the node
// does not call fdatasync(2) itself.
func datasync(f *os.File) error { return f.Sync() }
