package e2e

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc/proctest"
)

// TestLateNodeOfANewClusterStartsAsAReplacement: the harness's start of a
// new cluster survives a node started after the other two elected a leader
// (on a loaded machine, TestConsoleInABrowser's n2 exited with "peers already
// form a cluster", and the test failed before it began). The late node
// refuses, as serve must for a node that may have lost its state; the
// harness, whose nodes never ran, starts it again as a fresh replacement,
// the remedy the refusal names, and every node then follows one leader.
// Here the lateness is forced: n3 starts only once n1 and n2 have a leader.
func TestLateNodeOfANewClusterStartsAsAReplacement(t *testing.T) {
	c := proctest.NewCluster(t, 3, proctest.Insecure)
	nodes := c.Nodes()
	for _, n := range nodes[:2] {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	proctest.WaitLeader(t, c, 30*time.Second)
	late := nodes[2]
	if err := late.Start(); err != nil {
		t.Fatal(err)
	}
	leader := proctest.WaitStarted(t, c, 60*time.Second)

	b, err := os.ReadFile(late.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	refused := strings.Index(log, "peers already form a cluster")
	replacement := strings.LastIndex(log, "--replace")
	if refused < 0 || replacement < refused {
		t.Fatalf("%s: want the refusal, then a start with --replace, in its log:\n%s", late.ID(), proctest.Tail(b, 3000))
	}
	if bytes.Contains(b, []byte("bootstrapped a new cluster")) {
		t.Errorf("%s bootstrapped", late.ID())
	}
	if !late.Running() {
		t.Fatalf("%s is not running", late.ID())
	}
	st, err := late.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.GetLeaderId() != leader.ID() || len(st.GetServers()) != 3 {
		t.Errorf("%s follows %q with %d servers; want %s and 3", late.ID(), st.GetLeaderId(), len(st.GetServers()), leader.ID())
	}
}
