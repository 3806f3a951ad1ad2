package cluster

import (
	"log"
	"os"
)

// hashicorp/raft-wal preallocates its segment files with
// github.com/coreos/etcd/pkg/fileutil, whose logger, capnslog, takes over
// the standard library's log package in its init (it sets log's output to
// its own formatter, and to journald under systemd). That would change
// what every program importing cluster writes through log and through
// slog's default logger. This init runs after capnslog's (cluster imports
// it), and puts log back as the standard library sets it.
func init() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags)
	log.SetPrefix("")
}
