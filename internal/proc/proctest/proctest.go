// Package proctest holds the testing.TB helpers around package proc: build
// the leasehold binary once per test binary, and start a cluster of real
// `leasehold serve` processes that the test's cleanup kills by PID. It is
// for tests only.
package proctest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
// configure (if given) has changed the layout, and waits for a leader. The
// nodes serve mutual TLS unless a configure sets Insecure; the cluster's
// connections present its operator certificate (c.Certs(), also for the
// test's own clients: ClientTLS). The test's cleanup kills every node by PID
// and closes the connections; if the test failed it logs the end of each
// node's log, and it fails the test if a node exited on its own.
func StartCluster(tb testing.TB, n int, configure ...func(*proc.Layout)) *proc.Cluster {
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
			tb.Errorf("node %s", e)
		}
		if tb.Failed() {
			for _, n := range c.Nodes() {
				b, _ := os.ReadFile(n.LogPath())
				tb.Logf("--- %s log (last 3000 bytes) ---\n%s", n.ID(), Tail(b, 3000))
			}
		}
	})
	for _, n := range c.Nodes()[:l.Nodes] { // Layout.Spares are started by the test
		if err := n.Start(); err != nil {
			tb.Fatal(err)
		}
	}
	WaitLeader(tb, c, StartTimeout)
	return c
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
