package e2e

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestMain builds the leasehold binary once for every test.
func TestMain(m *testing.M) { os.Exit(proctest.Main(m)) }

// procCluster is a cluster of real serve processes on loopback, with
// helpers that fail the test instead of returning errors.
type procCluster struct {
	*proc.Cluster
	t testing.TB
}

// startCluster starts n nodes serving mutual TLS (unless a configure says
// Insecure) and waits for a leader; the test's cleanup kills them and, if
// it failed, logs the end of their logs.
func startCluster(t testing.TB, n int, configure ...func(*proc.Layout)) *procCluster {
	t.Helper()
	return &procCluster{Cluster: proctest.StartCluster(t, n, configure...), t: t}
}

// sdkTLS returns the SDK option of a client-role certificate named name of
// the cluster's CA: what an application's process presents.
func (c *procCluster) sdkTLS(name string) client.Option {
	c.t.Helper()
	f := proctest.ClientTLS(c.t, c.Cluster, name)
	return client.WithTLS(f.Cert, f.Key, f.CA)
}

// start starts a node's serve process again, with the same flags.
func (c *procCluster) start(node *proc.Node) {
	c.t.Helper()
	if err := node.Start(); err != nil {
		c.t.Fatal(err)
	}
}

// kill sends SIGKILL to a running node and waits for it to exit.
func (c *procCluster) kill(node *proc.Node) {
	c.t.Helper()
	if err := node.Kill(); err != nil {
		c.t.Fatal(err)
	}
}

// stop sends SIGTERM (graceful stop) and waits for the node to exit; a node
// that takes over 30 seconds is killed and fails the test.
func (c *procCluster) stop(node *proc.Node) {
	c.t.Helper()
	if err := node.Stop(30 * time.Second); err != nil {
		c.t.Error(err)
	}
}

// waitLeader waits until a running node reports itself leader and returns it.
func (c *procCluster) waitLeader(limit time.Duration) *proc.Node {
	c.t.Helper()
	return proctest.WaitLeader(c.t, c.Cluster, limit)
}

// waitHealthy waits until every running node names the same leader.
func (c *procCluster) waitHealthy(limit time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := c.Admin().WaitHealthy(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// logged reports whether any node's log so far matches re.
func (c *procCluster) logged(re *regexp.Regexp) bool {
	var logs strings.Builder
	for _, n := range c.Nodes() {
		b, _ := os.ReadFile(n.LogPath())
		logs.Write(b)
	}
	return re.MatchString(logs.String())
}

// leaderTerm returns the leader's term, waiting up to limit for a leader.
// A test that judges throughput compares it before and after its run: an
// election in between (a starved machine misses heartbeats) explains a
// shortfall that is not the code's.
func (c *procCluster) leaderTerm(limit time.Duration) uint64 {
	c.t.Helper()
	st, err := c.waitLeaderStatus(limit)
	if err != nil {
		c.t.Fatal(err)
	}
	return st.Status.GetTerm()
}

// waitLeaderStatus returns the leader's status, waiting up to limit for a
// node to lead. Regression: leaderTerm asked once (Admin.Leader), so an
// election in progress at that instant, the very thing it is there to
// report, failed the test with "no node is the leader". Safe to call from
// any goroutine: it returns its error.
func (c *procCluster) waitLeaderStatus(limit time.Duration) (proc.NodeStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return c.Admin().WaitLeader(ctx)
}

// onLeader calls fn against whichever node is leader, retrying on errors that
// mean "not here" or "unknown outcome" until limit passes (proc.OnLeader).
func onLeader[T any](t testing.TB, c *procCluster, limit time.Duration, fn func(context.Context, pb.LeaseholdClient) (T, error)) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	v, err := proc.OnLeader(ctx, c.Admin(), fn)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
