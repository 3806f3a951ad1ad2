// Package proctest holds the testing.TB helpers around package proc: build
// the leasehold binary once per test binary, and start a cluster of real
// `leasehold serve` processes that the test's cleanup kills by PID. It is
// for tests only.
package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// binary is the leasehold binary Main built.
var binary string

// Main builds the leasehold binary (with build tags, if any) into a
// temporary directory, runs the tests, removes the directory and returns
// the exit code: call it as os.Exit(proctest.Main(m)) from TestMain.
func Main(m *testing.M, tags ...string) int {
	dir, err := os.MkdirTemp("", "leasehold-proctest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "leasehold")
	if err := proc.Build(ctx, out, proc.LeaseholdPackage, tags...); err != nil {
		fmt.Fprintln(os.Stderr, "build leasehold:", err)
		return 1
	}
	binary = out
	return m.Run()
}

// Binary returns the leasehold binary Main built; it fails tb if Main did
// not run.
func Binary(tb testing.TB) string {
	tb.Helper()
	if binary == "" {
		tb.Fatal("proctest: no leasehold binary: call proctest.Main from TestMain")
	}
	return binary
}

// StartTimeout bounds how long StartCluster waits for a leader.
const StartTimeout = 30 * time.Second

// StartCluster starts n nodes of Binary on free loopback ports (and
// prepares the layout's spares without starting them), with data,
// logs and certificates in tb.TempDir() and log level debug, after
// configure (if given) has changed the layout, and waits until they all
// name one leader (WaitStarted). The nodes serve mutual TLS unless a
// configure sets Insecure; the cluster's connections present its operator
// certificate (c.Certs(), also for the test's own clients: ClientTLS). The
// test's cleanup kills every node by PID and closes the connections; if the
// test failed it logs the end of each node's log, and it fails the test if a
// node exited on its own.
func StartCluster(tb testing.TB, n int, configure ...func(*proc.Layout)) *proc.Cluster {
	tb.Helper()
	c := NewCluster(tb, n, configure...)
	for _, nd := range c.Nodes()[:n] { // Layout.Spares are started by the test
		if err := nd.Start(); err != nil {
			tb.Fatal(err)
		}
	}
	WaitStarted(tb, c, StartTimeout)
	return c
}

// NewCluster is StartCluster without the start: the cluster of n nodes
// (and the layout's spares), its cleanup registered, none running.
func NewCluster(tb testing.TB, n int, configure ...func(*proc.Layout)) *proc.Cluster {
	tb.Helper()
	l := proc.Layout{Nodes: n, Dir: tb.TempDir(), LogLevel: "debug"}
	for _, f := range configure {
		f(&l)
	}
	specs, err := l.Specs()
	if err != nil {
		tb.Fatal(err)
	}
	certs, err := l.Certs()
	if err != nil {
		tb.Fatal(err)
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: Binary(tb), Nodes: specs, Certs: certs, Insecure: l.Insecure})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.KillAll(); err != nil {
			tb.Error(err)
		}
		c.Close()
		for _, e := range c.UnexpectedExits() {
			if !replaced(c, e) {
				tb.Errorf("node %s", e)
			}
		}
		forget(c)
		if tb.Failed() {
			for _, n := range c.Nodes() {
				b, _ := os.ReadFile(n.LogPath())
				tb.Logf("--- %s log (last 3000 bytes) ---\n%s", n.ID(), Tail(b, 3000))
			}
		}
	})
	return c
}

// lateRefusal is what serve's one-line exit says when a node with an empty
// data directory finds that its peers already form a cluster.
const lateRefusal = "peers already form a cluster"

// WaitStarted waits up to limit until every running node of c, a cluster
// whose nodes were all just started on empty data directories, names the
// same leader, and returns that leader; it fails tb if that does not
// happen, or if a node exits on its own meanwhile, except in one case.
//
// Two nodes can bootstrap and elect a leader (a heartbeat timeout, 500ms)
// before a third, started a moment later, has probed its peers; that one
// then refuses to start ("peers already form a cluster"), as it must for a
// node that may have lost its state (cluster/DESIGN.md, "Storage and
// start-up"). Its refusal names the remedy for a node that never ran: start
// it as a fresh replacement (serve --replace). These nodes never ran, so
// WaitStarted does that, once per node, and the test's cleanup does not
// count the refusal as a crash. Regression: on a loaded machine
// (TestConsoleInABrowser beside other tests) n2 took 300ms longer than n3
// to start, n1 and n3 elected n1, and n2 exited with that refusal.
func WaitStarted(tb testing.TB, c *proc.Cluster, limit time.Duration) *proc.Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	retried := map[string]bool{}
	for {
		err := c.Admin().WaitHealthy(ctx)
		if err == nil {
			break
		}
		var ee *proc.ExitError
		if !errors.As(err, &ee) {
			tb.Fatal(err)
		}
		n := c.Node(ee.Exit.Name)
		if n == nil || retried[n.ID()] || !refusedLate(n, ee.Exit.PID) {
			tb.Fatal(err)
		}
		retried[n.ID()] = true
		markReplaced(c, ee.Exit)
		tb.Logf("%s started after its peers had elected a leader and refused; starting it again as a fresh replacement (--replace)", n.ID())
		if err := n.StartWith("--replace"); err != nil {
			tb.Fatal(err)
		}
	}
	n, err := c.WaitLeader(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// refusedLate reports whether n's run with pid exited with the refusal of
// a node whose peers already form a cluster: its log, from the line the
// runner wrote when it started that run, says so.
func refusedLate(n *proc.Node, pid int) bool {
	b, err := os.ReadFile(n.LogPath())
	if err != nil {
		return false
	}
	i := bytes.LastIndex(b, fmt.Appendf(nil, "--- started %s pid %d:", n.ID(), pid))
	return i >= 0 && bytes.Contains(b[i:], []byte(lateRefusal))
}

// replacedExits holds, per cluster, the exits WaitStarted answered by
// starting the node again as a replacement: not crashes. Guarded by
// replacedMu.
var (
	replacedMu    sync.Mutex
	replacedExits = map[*proc.Cluster][]proc.Exit{}
)

func markReplaced(c *proc.Cluster, e proc.Exit) {
	replacedMu.Lock()
	defer replacedMu.Unlock()
	replacedExits[c] = append(replacedExits[c], e)
}

func replaced(c *proc.Cluster, e proc.Exit) bool {
	replacedMu.Lock()
	defer replacedMu.Unlock()
	for _, r := range replacedExits[c] {
		if r.Name == e.Name && r.PID == e.PID {
			return true
		}
	}
	return false
}

func forget(c *proc.Cluster) {
	replacedMu.Lock()
	defer replacedMu.Unlock()
	delete(replacedExits, c)
}

// Insecure is a StartCluster option: the nodes serve plain text
// (--insecure) and the cluster's connections speak it.
func Insecure(l *proc.Layout) { l.Insecure = true }

// ClientTLS returns the files of a client-role certificate named name of
// c's CA (issued on first use), for an SDK client of the test
// (client.WithTLS(f.Cert, f.Key, f.CA)); it fails tb if c is in plain text.
func ClientTLS(tb testing.TB, c *proc.Cluster, name string) proc.TLSFiles {
	tb.Helper()
	if c.Certs() == nil {
		tb.Fatal("proctest: the cluster serves plain text: no client certificate")
	}
	f, err := c.Certs().Client(name)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// WaitLeader waits up to limit for a node of c to lead and returns it; it
// fails tb if none does, or if a node exits on its own meanwhile.
func WaitLeader(tb testing.TB, c *proc.Cluster, limit time.Duration) *proc.Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n, err := c.WaitLeader(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// Tail returns the last n bytes of b.
func Tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
