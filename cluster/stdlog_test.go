package cluster

import (
	"log"
	"os"
	"testing"
)

// TestStandardLogNotHijacked: importing cluster leaves the standard
// library's log package as it starts, although raft-wal's dependency
// capnslog redirects it in its init (without stdlog.go's init, log.Writer
// is capnslog's writer and the flags are 0).
func TestStandardLogNotHijacked(t *testing.T) {
	if w := log.Writer(); w != os.Stderr {
		t.Errorf("log writes to %T; want os.Stderr", w)
	}
	if f := log.Flags(); f != log.LstdFlags {
		t.Errorf("log flags %d; want log.LstdFlags (%d)", f, log.LstdFlags)
	}
}
