package proc_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

func getLimit(ctx context.Context, api pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
	return api.GetLimit(ctx, &pb.GetLimitRequest{Key: "k"})
}

// OnLeader finds the leader among followers that answer NotLeader, and
// again after the leader is killed, through the election; Status reports
// the killed node as not running without asking it.
func TestClusterOnLeaderThroughFailover(t *testing.T) {
	c := proctest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Two nodes elect a leader: wait for the third to serve too.
	if err := c.Admin().WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	lim := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Second), Burst: 10}
	if _, err := proc.OnLeader(ctx, c.Admin(), func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: lim})
	}); err != nil {
		t.Fatal(err)
	}
	// A follower says NotLeader: that is what OnLeader steps over. (On a
	// loaded machine the leader may change under the check: look again.)
	leader := followersSayNotLeader(ctx, t, c)

	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	got, err := proc.OnLeader(ctx, c.Admin(), getLimit)
	if err != nil {
		t.Fatalf("after killing the leader %s: %v", leader.ID(), err)
	}
	if !got.Found || got.Limit.GetLimit() != 10 {
		t.Errorf("GetLimit = %v, want the limit set before the failover", got)
	}
	for _, st := range c.Admin().Status(ctx, 5*time.Second) {
		if (st.Name == leader.ID()) != errors.Is(st.Err, proc.ErrNotRunning) {
			t.Errorf("status of %s: %v, %v (killed %s)", st.Name, st.Status, st.Err, leader.ID())
		}
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Admin().WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StopAll(30 * time.Second); err != nil { // serve's own stop timeout is 10s
		t.Errorf("graceful stop: %v", err)
	}
}

// followersSayNotLeader checks that every node but the leader answers
// GetLimit with NotLeader, and returns the leader. If one answers, it looks
// again while the leader has changed meanwhile, at most ten times.
func followersSayNotLeader(ctx context.Context, t *testing.T, c *proc.Cluster) *proc.Node {
	t.Helper()
	for range 10 {
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var answered *proc.Node
		for _, n := range c.Nodes() {
			if n == leader {
				continue
			}
			_, err := getLimit(ctx, n.API())
			if err == nil {
				answered = n
				break
			}
			if !errors.Is(transport.FromStatus(err), transport.ErrNotLeader) {
				t.Fatalf("GetLimit on follower %s = %v, want NotLeader", n.ID(), err)
			}
		}
		if answered == nil {
			return leader
		}
		if now, err := c.Leader(ctx); err == nil && now == leader {
			t.Fatalf("follower %s answered GetLimit while %s leads", answered.ID(), leader.ID())
		}
	}
	t.Fatal("the leader changed ten times during the check")
	return nil
}

// WaitLeader returns at once, naming the node, when a node exits on its
// own: here one that cannot parse its flags, while the other two could
// elect a leader.
func TestWaitLeaderReturnsWhenANodeExits(t *testing.T) {
	l := proc.Layout{Nodes: 3, Dir: t.TempDir()}
	specs, err := l.Specs()
	if err != nil {
		t.Fatal(err)
	}
	certs, err := l.Certs()
	if err != nil {
		t.Fatal(err)
	}
	specs[1].ExtraArgs = []string{"--no-such-flag"}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: proctest.Binary(t), Nodes: specs, Certs: certs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer c.KillAll()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.WaitLeader(ctx)
	var ee *proc.ExitError
	if !errors.As(err, &ee) || ee.Exit.Name != "n2" {
		t.Fatalf("WaitLeader = %v, want n2's exit", err)
	}
	var xe *exec.ExitError
	if !errors.As(ee.Exit.Err, &xe) || xe.ExitCode() != 2 || !strings.Contains(err.Error(), "n2.log") {
		t.Errorf("exit %v: want status 2 (a flag error) and the log's path", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("WaitLeader took %v", d)
	}
	if u := c.UnexpectedExits(); len(u) != 1 {
		t.Errorf("UnexpectedExits = %v, want n2's", u)
	}
}

// TestStoppedLeaderHeldTheCLIsCalls: with the leader stopped (kill -STOP:
// its port still accepts, nothing answers) and a new one elected, a call
// made as the CLI makes it (Dial over every endpoint, the stopped node
// first, a deadline of 5 s) spent the whole deadline on the stopped node,
// as each call may take CallTimeout, and `leasehold limits get` failed.
// Reads of the leader must now answer; Status answers for the others.
// Gossip is on, for Members (`leasehold members`).
func TestStoppedLeaderHeldTheCLIsCalls(t *testing.T) {
	c := proctest.StartCluster(t, 3, func(l *proc.Layout) { l.Gossip = true })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lim := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Second), Burst: 10}
	if _, err := proc.OnLeader(ctx, c.Admin(), func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: lim})
	}); err != nil {
		t.Fatal(err)
	}
	stopped, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stopped.Pause(); err != nil {
		t.Fatal(err)
	}
	defer stopped.Resume()
	// The others elect a leader (the cluster's Admin skips a paused node).
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}

	endpoints := []string{stopped.ClientAddr()}
	for _, n := range c.Nodes() {
		if n != stopped {
			endpoints = append(endpoints, n.ClientAddr())
		}
	}
	a, err := proc.Dial(endpoints, c.Security())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cliCtx, cliCancel := context.WithTimeout(ctx, 5*time.Second) // the CLI's --timeout
	defer cliCancel()
	start := time.Now()
	got, err := proc.OnLeader(cliCtx, a, getLimit)
	if err != nil || got.GetLimit().GetLimit() != 10 {
		t.Fatalf("GetLimit with the stopped leader first: %v, %v; want the limit from the new leader", got, err)
	}
	t.Logf("GetLimit answered in %v with the stopped leader first", time.Since(start))
	if _, err := proc.OnLeader(cliCtx, a, func(ctx context.Context, api pb.LeaseholdClient) (*pb.MembersResponse, error) {
		return api.Members(ctx, &pb.MembersRequest{})
	}); err != nil {
		t.Fatalf("Members with the stopped leader first: %v", err)
	}
	for _, st := range a.Status(ctx, 3*time.Second) { // status's --timeout
		if (st.Addr == stopped.ClientAddr()) != (st.Err != nil) {
			t.Errorf("status of %s: %v, %v (stopped %s)", st.Addr, st.Status, st.Err, stopped.ClientAddr())
		}
	}

	if err := stopped.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.Admin().WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StopAll(30 * time.Second); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
}
