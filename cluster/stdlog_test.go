package cluster

import (
	"log"
	"os"
	"testing"
)

// stderrAtStart is os.Stderr as the process started with it. Package
// initialization runs before testing.M.Run, which under -test.v=test2json
// (go test -json) points os.Stderr at os.Stdout.
var stderrAtStart = os.Stderr

// TestStandardLogNotHijacked: importing cluster leaves the standard
// library's log package as it starts, although raft-wal's dependency
// capnslog redirects it in its init (without stdlog.go's init, log.Writer
// is capnslog's writer and the flags are 0).
//
// Regression: it compared log.Writer with os.Stderr read when the test ran,
// so under go test -json (os.Stderr then os.Stdout) it failed with "log
// writes to *os.File; want os.Stderr".
func TestStandardLogNotHijacked(t *testing.T) {
	if w := log.Writer(); w != stderrAtStart {
		t.Errorf("log writes to %T; want os.Stderr as the process started", w)
	}
	if f := log.Flags(); f != log.LstdFlags {
		t.Errorf("log flags %d; want log.LstdFlags (%d)", f, log.LstdFlags)
	}
}
